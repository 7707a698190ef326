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

from trainer.models.architecture import T5Architecture


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


def forward_flops(shape: T5Architecture, batch_size: int, src_len: int, tgt_len: int) -> ForwardFlops:
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
    shape: T5Architecture, batch_size: int, src_len: int, tgt_len: int, gradient_checkpointing: bool = False
) -> StepFlops:
    """Forward + backward (3× forward) of a seq2seq LM step; checkpointing re-runs the blocks' forward."""
    forward = forward_flops(shape, batch_size, src_len, tgt_len)
    model = 3 * forward.total
    return StepFlops(model=model, hardware=model + (forward.recomputed if gradient_checkpointing else 0))


def knife_student_step_flops(
    student: T5Architecture,
    teacher: T5Architecture,
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
