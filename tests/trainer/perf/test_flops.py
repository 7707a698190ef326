"""T5 FLOP counting: hand-computed counts, HF's real parameter count, torch's own FLOP counter, and 6·N·tokens."""

from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import T5Config, T5ForConditionalGeneration

from trainer.models.architecture import T5Architecture
from trainer.perf.flops import forward_flops, knife_student_step_flops, train_step_flops

# d_model 8, two heads of 4 (inner 8), ReLU FFN of 16, one layer per stack, vocabulary 10, tied embeddings.
HAND = T5Architecture(
    d_model=8, d_ff=16, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=4, feed_forward_proj="relu",
    tie_word_embeddings=True, vocab_size=10,
)  # fmt: skip
T5_BASE = T5Architecture(
    d_model=768, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12, d_kv=64, feed_forward_proj="relu",
    tie_word_embeddings=True,
)  # fmt: skip


def test_forward_flops_match_a_hand_count_for_a_tiny_config() -> None:
    """Batch 1, 3 encoder tokens, 2 decoder tokens; 2 FLOPs per multiply-add."""
    f = forward_flops(HAND, batch_size=1, src_len=3, tgt_len=2)
    assert f.encoder_projections == 2 * 3 * (4 * 8 * 8)  # 3 tokens through q, k, v, o (8×8 each) = 1536
    assert f.encoder_attention == 2 * (3 * 3 * 8) * 2  # QKᵀ (3×3 scores over 8 dims) and PV = 288
    assert f.encoder_ffn_input == 2 * 3 * (8 * 16)  # wi = 768
    assert f.encoder_ffn_output == 2 * 3 * (16 * 8)  # wo = 768
    assert f.decoder_self_projections == 2 * 2 * (4 * 8 * 8)  # = 1024
    assert f.decoder_self_attention == 2 * (2 * 2 * 8) * 2  # full 2×2 square = 128
    assert f.cross_query_output == 2 * 2 * (2 * 8 * 8)  # q and o on 2 decoder tokens = 512
    assert f.cross_key_value == 2 * 3 * (2 * 8 * 8)  # k and v on 3 encoder tokens = 768
    assert f.cross_attention == 2 * (2 * 3 * 8) * 2  # 2 queries × 3 keys = 192
    assert f.decoder_ffn_input == f.decoder_ffn_output == 2 * 2 * (8 * 16)  # = 512 each
    assert f.lm_head == 2 * 2 * 8 * 10  # = 320
    assert f.total == 7328
    assert f.blocks == 7328 - 320
    assert f.recomputed == 7328 - 320 - 768 - 512  # checkpointing does not re-run the last product (wo) of a block
    assert f.attention_products == 288 + 128 + 192

    assert train_step_flops(HAND, 1, 3, 2) == train_step_flops(HAND, 1, 3, 2, gradient_checkpointing=False)
    step = train_step_flops(HAND, 1, 3, 2)
    assert (step.model, step.hardware) == (3 * 7328, 3 * 7328)
    recomputed = train_step_flops(HAND, 1, 3, 2, gradient_checkpointing=True)
    assert (recomputed.model, recomputed.hardware) == (3 * 7328, 3 * 7328 + 5728)
    # Linear in the batch.
    assert forward_flops(HAND, 4, 3, 2).total == 4 * 7328


def test_parameter_count_by_hand_and_against_hf() -> None:
    # encoder: 1 × (attention 4·8·8 + FFN 2·8·16 + 2 norms of 8) + final norm 8 + position bias 32 buckets × 2 heads
    # decoder: 1 × (2 attentions + FFN + 3 norms) + final norm + position bias; embeddings 10 × 8 once (tied)
    assert HAND.num_parameters == (256 + 256 + 16) + 8 + 64 + (512 + 256 + 24) + 8 + 64 + 80 == 1544
    wider = T5Architecture(
        d_model=64, d_ff=96, num_layers=2, num_decoder_layers=3, num_heads=3, d_kv=16, feed_forward_proj="gated-gelu",
        tie_word_embeddings=True, vocab_size=50,
    )  # fmt: skip
    for shape in (HAND, wider):
        config = _hf_config(shape)
        assert T5Architecture.from_hf_config(config) == shape
        assert shape.num_parameters == sum(p.numel() for p in T5ForConditionalGeneration(config).parameters())
    # An untied LM head (configs that keep one) is a second vocabulary × d_model matrix.
    assert replace(HAND, tie_word_embeddings=False).num_parameters == 1544 + 10 * 8


def _hf_config(shape: T5Architecture) -> T5Config:
    return T5Config(
        **shape.config_kwargs(pad_token_id=0, eos_token_id=1),
        attn_implementation="eager",  # explicit matmuls, which FlopCounterMode counts on CPU
    )


@pytest.fixture
def torch_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's own F.linear: a ZeRO-3 engine built earlier in this process leaves DeepSpeed's zero3_linear_wrap
    installed process-wide (deepspeed 0.19.8), whose backward runs extra matmuls that are not HF T5's."""
    monkeypatch.setattr(torch.nn.functional, "linear", torch._C._nn.linear)


@pytest.mark.usefixtures("torch_linear")
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_counts_equal_torch_flop_counter_on_a_real_hf_t5_step(gated: bool, checkpointing: bool) -> None:
    """torch.utils.flop_counter counts every matmul HF T5 actually runs, forward and backward."""
    shape = T5Architecture(
        d_model=32, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4, d_kv=8,
        feed_forward_proj="gated-gelu" if gated else "relu", tie_word_embeddings=True, vocab_size=40, dropout_rate=0.0,
    )  # fmt: skip
    model = T5ForConditionalGeneration(_hf_config(shape)).train()
    if checkpointing:
        model.activation_checkpointing_enable()  # HF's default: torch's non-reentrant checkpoint
    batch, src, tgt = 3, 7, 5
    input_ids = torch.randint(1, shape.vocab_size, (batch, src))
    labels = torch.randint(1, shape.vocab_size, (batch, tgt))

    with FlopCounterMode(display=False) as forward_only, torch.no_grad():
        model(input_ids=input_ids, labels=labels)
    assert forward_only.get_total_flops() == forward_flops(shape, batch, src, tgt).total

    with FlopCounterMode(display=False) as step:
        model(input_ids=input_ids, labels=labels).loss.backward()
    expected = train_step_flops(shape, batch, src, tgt, gradient_checkpointing=checkpointing)
    assert step.get_total_flops() == expected.hardware


def test_six_n_tokens_holds_without_attention_and_roughly_with_it() -> None:
    """Each weight does 6 FLOPs per token it touches in a training step: encoder weights and cross-attention
    k/v see encoder tokens, the rest of the decoder and the LM head see decoder tokens."""
    batch, src, tgt = 8, 128, 32
    forward = forward_flops(T5_BASE, batch, src, tgt)
    d, inner, ffn = T5_BASE.d_model, T5_BASE.inner_dim, 2 * T5_BASE.d_model * T5_BASE.d_ff
    on_encoder_tokens = T5_BASE.num_layers * (4 * d * inner + ffn) + T5_BASE.num_decoder_layers * 2 * d * inner
    on_decoder_tokens = T5_BASE.num_decoder_layers * (6 * d * inner + ffn) + T5_BASE.vocab_size * d
    exact = 6 * (on_encoder_tokens * batch * src + on_decoder_tokens * batch * tgt)
    assert 3 * (forward.total - forward.attention_products) == exact

    # With equal lengths every matmul weight sees the same tokens, so 6·N·tokens is the whole count up to the
    # attention products (~3% at 128 tokens for t5-base) and the few non-matmul parameters (norms, position bias).
    n = T5_BASE.num_parameters
    for length in (64, 128):
        step = train_step_flops(T5_BASE, batch, length, length).model
        assert 1.0 < step / (6 * n * batch * length) < 1.06
    # At 2048 tokens the attention products are no longer small: the approximation undercounts by > 20%.
    assert train_step_flops(T5_BASE, 1, 2048, 2048).model / (6 * n * 2048) > 1.2


def test_knife_student_step_adds_one_teacher_forward_over_input_and_rationale() -> None:
    step = knife_student_step_flops(HAND, HAND, 2, input_len=3, rationale_len=4, tgt_len=2)
    teacher_forward = forward_flops(HAND, 2, 7, 2).total
    assert step.model == 3 * forward_flops(HAND, 2, 3, 2).total + teacher_forward
    assert step.hardware == step.model
    recomputed = knife_student_step_flops(HAND, HAND, 2, 3, 4, 2, gradient_checkpointing=True)
    assert recomputed.hardware - recomputed.model == forward_flops(HAND, 2, 3, 2).recomputed


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        forward_flops(HAND, 0, 3, 2)
