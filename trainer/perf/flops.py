"""FLOPs of T5 training steps counted from the architecture, for throughput and MFU reports.

Only matrix products are counted (2 FLOPs per multiply-add): every projection, the attention score (QKᵀ) and
context (PV) products, cross-attention and the LM head. Layer norms, softmax, activations, the relative
position bias and the loss are a few percent of a step at these sizes and are left out, as in the usual MFU
convention (Chowdhery et al. 2022, appendix B). The decoder's causal self-attention is counted over the full
t×t square because HF T5 computes it that way (masked, not skipped).

Backward costs twice the forward (a gradient for each operand of every product), so a training step is 3× the
forward. With activation recomputation (HF gradient checkpointing, one T5 block at a time) every block runs its
forward a second time during backward, except its last product: HF checkpoints with torch's non-reentrant
checkpoint, which stops recomputing once backward has every saved tensor it needs, and the output of the FFN's
`wo` is not one of them. The LM head is not recomputed. MFU uses the model FLOPs (without recomputation); the
hardware FLOPs (with it) give the HFU. tests/trainer/perf/test_flops.py checks all of this against
torch.utils.flop_counter on a real HF T5 step.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from trainer.planning.architecture import T5Architecture


@dataclass(frozen=True)
class T5Shape:
    """The dimensions of a T5 encoder-decoder that its FLOPs and parameter count depend on."""

    d_model: int
    d_ff: int
    d_kv: int
    num_heads: int
    num_layers: int
    num_decoder_layers: int
    vocab_size: int
    gated_ffn: bool = True
    tie_word_embeddings: bool = True
    relative_attention_num_buckets: int = 32

    @classmethod
    def from_config(cls, config: Any) -> T5Shape:
        """From a transformers T5Config (or anything with its attribute names)."""
        return cls(
            d_model=config.d_model,
            d_ff=config.d_ff,
            d_kv=config.d_kv,
            num_heads=config.num_heads,
            num_layers=config.num_layers,
            num_decoder_layers=config.num_decoder_layers,
            vocab_size=config.vocab_size,
            gated_ffn=bool(getattr(config, "is_gated_act", False)),
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
            relative_attention_num_buckets=config.relative_attention_num_buckets,
        )

    @property
    def inner_dim(self) -> int:
        """Width of the concatenated attention heads (num_heads × d_kv; 4096 for t5-3b, not d_model)."""
        return self.num_heads * self.d_kv

    @property
    def ffn_matrices(self) -> int:
        """Gated FFNs (T5 v1.1, gated-gelu) have wi_0, wi_1 and wo; the original ReLU FFN has wi and wo."""
        return 3 if self.gated_ffn else 2


def parameter_count(shape: T5Shape) -> int:
    """Exactly the parameters of HF's T5ForConditionalGeneration for this shape: the memory planner's count."""
    return T5Architecture(
        name="t5",
        vocab_size=shape.vocab_size,
        d_model=shape.d_model,
        d_ff=shape.d_ff,
        num_layers=shape.num_layers,
        num_decoder_layers=shape.num_decoder_layers,
        num_heads=shape.num_heads,
        d_kv=shape.d_kv,
        gated=shape.gated_ffn,
        tie_word_embeddings=shape.tie_word_embeddings,
        relative_attention_num_buckets=shape.relative_attention_num_buckets,
    ).num_parameters


@dataclass(frozen=True)
class ForwardFlops:
    """Forward-pass FLOPs of one batch, by where they are spent."""

    encoder_projections: int
    encoder_attention: int
    encoder_ffn_input: int
    encoder_ffn_output: int
    decoder_self_projections: int
    decoder_self_attention: int
    cross_query_output: int
    cross_key_value: int
    cross_attention: int
    decoder_ffn_input: int
    decoder_ffn_output: int
    lm_head: int

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    @property
    def blocks(self) -> int:
        """Everything inside the T5 blocks (all but the LM head)."""
        return self.total - self.lm_head

    @property
    def recomputed(self) -> int:
        """What HF gradient checkpointing re-runs in backward: the blocks minus each block's final `wo` product."""
        return self.blocks - self.encoder_ffn_output - self.decoder_ffn_output

    @property
    def attention_products(self) -> int:
        """The score and context products, which grow with sequence length squared."""
        return self.encoder_attention + self.decoder_self_attention + self.cross_attention


def forward_flops(shape: T5Shape, batch_size: int, src_len: int, tgt_len: int) -> ForwardFlops:
    """Forward FLOPs of `batch_size` sequences of `src_len` encoder and `tgt_len` decoder tokens."""
    if min(batch_size, src_len, tgt_len) < 1:
        raise ValueError(f"batch_size, src_len and tgt_len must be positive, got {batch_size}, {src_len}, {tgt_len}")
    d, inner, n_in = shape.d_model, shape.inner_dim, shape.ffn_matrices - 1
    enc_tokens, dec_tokens = batch_size * src_len, batch_size * tgt_len
    le, ld = shape.num_layers, shape.num_decoder_layers
    return ForwardFlops(
        encoder_projections=le * 2 * enc_tokens * 4 * d * inner,  # q, k, v, o
        encoder_attention=le * 2 * 2 * enc_tokens * src_len * inner,  # QKᵀ and PV over src_len keys
        encoder_ffn_input=le * 2 * enc_tokens * n_in * d * shape.d_ff,  # wi (ReLU) or wi_0 and wi_1 (gated)
        encoder_ffn_output=le * 2 * enc_tokens * shape.d_ff * d,  # wo
        decoder_self_projections=ld * 2 * dec_tokens * 4 * d * inner,
        decoder_self_attention=ld * 2 * 2 * dec_tokens * tgt_len * inner,
        cross_query_output=ld * 2 * dec_tokens * 2 * d * inner,  # q from the decoder, o back to d_model
        cross_key_value=ld * 2 * enc_tokens * 2 * d * inner,  # k, v of the encoder output, in every decoder layer
        cross_attention=ld * 2 * 2 * dec_tokens * src_len * inner,
        decoder_ffn_input=ld * 2 * dec_tokens * n_in * d * shape.d_ff,
        decoder_ffn_output=ld * 2 * dec_tokens * shape.d_ff * d,
        lm_head=2 * dec_tokens * d * shape.vocab_size,
    )


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one optimizer step: `model` is the MFU numerator, `hardware` adds recomputation (HFU)."""

    model: int
    hardware: int


def train_step_flops(
    shape: T5Shape, batch_size: int, src_len: int, tgt_len: int, gradient_checkpointing: bool = False
) -> StepFlops:
    """Forward + backward (3× forward) of a seq2seq LM step; checkpointing re-runs the blocks' forward."""
    forward = forward_flops(shape, batch_size, src_len, tgt_len)
    model = 3 * forward.total
    return StepFlops(model=model, hardware=model + (forward.recomputed if gradient_checkpointing else 0))


def knife_student_step_flops(
    student: T5Shape,
    teacher: T5Shape,
    batch_size: int,
    input_len: int,
    rationale_len: int,
    tgt_len: int,
    gradient_checkpointing: bool = False,
) -> StepFlops:
    """A KNIFE student step: the student trains on the input alone, the frozen teacher runs one forward
    (no backward) over input + rationale with the same decoder targets."""
    student_step = train_step_flops(student, batch_size, input_len, tgt_len, gradient_checkpointing)
    teacher_forward = forward_flops(teacher, batch_size, input_len + rationale_len, tgt_len).total
    return StepFlops(model=student_step.model + teacher_forward, hardware=student_step.hardware + teacher_forward)
