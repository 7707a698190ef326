import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from trainer.methods.knife.collate import build_knife_features, collate_knife
from trainer.models.t5_knife import encode, student_forward, teacher_forward
from trainer.objectives.distillation import layerwise_alignment, masked_mse

VOCAB = 50
PAD, EOS = 0, 1


def _tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        d_kv=16,
        decoder_start_token_id=0,
        pad_token_id=PAD,
        eos_token_id=EOS,
        dropout_rate=0.0,
    )
    config._attn_implementation = "eager"  # attention weights are only materialised by the eager kernel
    return T5ForConditionalGeneration(config).eval()


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    rows = [
        build_knife_features([5, 6, 7, EOS], [20, 21, EOS], [30, EOS], max_length=16),
        build_knife_features([8, EOS], [22, 23, 24, 25, 26, EOS], [31, 32, EOS], max_length=16),
        build_knife_features([9, 10, 11, 12, 13, EOS], [27, EOS], [33, EOS], max_length=16),
    ]
    return collate_knife(rows, pad_token_id=PAD)


def _teacher(model: T5ForConditionalGeneration, batch: dict[str, torch.Tensor], **kwargs):
    return teacher_forward(
        model,
        batch["teacher_input_ids"],
        batch["teacher_attention_mask"],
        batch["teacher_cross_attention_mask"],
        labels=batch["labels"],
        **kwargs,
    )


def test_teacher_cross_attention_never_sees_ftr_or_padding(batch: dict[str, torch.Tensor]) -> None:
    states = _teacher(_tiny_t5(), batch, output_attentions=True)
    assert states.cross_attentions is not None and len(states.cross_attentions) == 2
    hidden = batch["teacher_cross_attention_mask"] == 0  # FTR and padding positions
    for weights in states.cross_attentions:  # [B, heads, L, S_teacher]
        assert weights.shape[-1] == batch["teacher_input_ids"].shape[1]
        blocked = weights.masked_select(hidden[:, None, None, :].expand_as(weights))
        assert torch.count_nonzero(blocked) == 0
        allowed = weights.masked_select(~hidden[:, None, None, :].expand_as(weights))
        assert (allowed > 0).all()


def test_ftr_reaches_logits_only_through_the_encoder(batch: dict[str, torch.Tensor]) -> None:
    model = _tiny_t5()
    changed = dict(batch)
    ftr = (batch["teacher_cross_attention_mask"] == 0) & (batch["teacher_attention_mask"] == 1)
    changed["teacher_input_ids"] = torch.where(
        ftr, torch.full_like(ftr, 40, dtype=torch.long), batch["teacher_input_ids"]
    )
    with torch.no_grad():
        base, edited = _teacher(model, batch), _teacher(model, changed)
    assert not torch.allclose(base.logits, edited.logits)
    # Same FTR but a decoder allowed to read it: the masked teacher must differ from the unmasked one.
    with torch.no_grad():
        unmasked = teacher_forward(
            model,
            batch["teacher_input_ids"],
            batch["teacher_attention_mask"],
            batch["teacher_attention_mask"],
            labels=batch["labels"],
        )
    assert not torch.allclose(base.logits, unmasked.logits)


def test_teacher_forward_returns_states_and_loss(batch: dict[str, torch.Tensor]) -> None:
    model = _tiny_t5()
    states = _teacher(model, batch)
    assert states.loss is not None and torch.isfinite(states.loss)
    assert len(states.encoder_hidden_states) == 3 and len(states.decoder_hidden_states) == 3
    assert states.encoder_hidden_states[-1].shape == (*batch["teacher_input_ids"].shape, 32)
    assert states.decoder_hidden_states[-1].shape == (*batch["labels"].shape, 32)
    assert states.cross_attentions is None
    last_only = _teacher(model, batch, output_hidden_states=False)
    assert len(last_only.encoder_hidden_states) == 1 and last_only.decoder_hidden_states == ()
    torch.testing.assert_close(last_only.logits, states.logits)


def test_forward_needs_decoder_inputs(batch: dict[str, torch.Tensor]) -> None:
    model = _tiny_t5()
    with pytest.raises(ValueError, match="decoder_input_ids"):
        student_forward(model, batch["student_input_ids"], batch["student_attention_mask"])
    decoder_input_ids = torch.zeros(3, 1, dtype=torch.long)
    states = student_forward(
        model,
        batch["student_input_ids"],
        batch["student_attention_mask"],
        decoder_input_ids=decoder_input_ids,
    )
    assert states.loss is None and states.logits.shape == (3, 1, VOCAB)


def test_student_forward_matches_plain_model_call(batch: dict[str, torch.Tensor]) -> None:
    model = _tiny_t5()
    ids, mask = batch["student_input_ids"], batch["student_attention_mask"]
    states = student_forward(model, ids, mask, labels=batch["labels"])
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, labels=batch["labels"])
    torch.testing.assert_close(states.logits, reference.logits)
    torch.testing.assert_close(states.loss, reference.loss)
    assert states.encoder_hidden_states[-1].shape == (*ids.shape, 32)


def _manual_greedy(model, batch: dict[str, torch.Tensor], steps: int) -> torch.Tensor:
    encoder = model.get_encoder()(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"])
    decoded = torch.full((batch["teacher_input_ids"].shape[0], 1), model.config.decoder_start_token_id)
    finished = torch.zeros(decoded.shape[0], dtype=torch.bool)
    for _ in range(steps):
        logits = model(
            encoder_outputs=encoder,
            attention_mask=batch["teacher_cross_attention_mask"],
            decoder_input_ids=decoded,
        ).logits[:, -1]
        token = torch.where(finished, torch.full_like(finished, PAD, dtype=torch.long), logits.argmax(-1))
        decoded = torch.cat([decoded, token[:, None]], dim=1)
        finished |= token == EOS
    return decoded


def teacher_generate(model, input_ids, attention_mask, cross_attention_mask, **kwargs) -> torch.Tensor:
    """What evaluation does for the teacher (KnifeTeacher.encoder_pass, then generate from its states)."""
    encoder_outputs = encode(model, input_ids, attention_mask)
    return model.generate(
        encoder_outputs=encoder_outputs, attention_mask=cross_attention_mask, do_sample=False, num_beams=1, **kwargs
    )


def test_teacher_generate_is_masked_greedy_decoding(batch: dict[str, torch.Tensor]) -> None:
    model = _tiny_t5(seed=3)
    args = (
        batch["teacher_input_ids"],
        batch["teacher_attention_mask"],
        batch["teacher_cross_attention_mask"],
    )
    with torch.no_grad():
        generated = teacher_generate(model, *args, max_new_tokens=5, min_new_tokens=5)
        again = teacher_generate(model, *args, max_new_tokens=5, min_new_tokens=5)
        expected = _manual_greedy(model, batch, steps=5)
    assert torch.equal(generated, again)
    # min_new_tokens forbids EOS in generate; the manual loop has no such rule, so compare until an EOS.
    free = teacher_generate(model, *args, max_new_tokens=5)
    width = free.shape[1]
    assert torch.equal(free, expected[:, :width])
    assert generated.shape == (3, 6)


def test_teacher_generate_ignores_padding_tokens(batch: dict[str, torch.Tensor]) -> None:
    model = _tiny_t5(seed=4)
    padding = batch["teacher_attention_mask"] == 0
    assert padding.any()
    noisy = batch["teacher_input_ids"].masked_fill(padding, 17)
    with torch.no_grad():
        clean = teacher_generate(
            model,
            batch["teacher_input_ids"],
            batch["teacher_attention_mask"],
            batch["teacher_cross_attention_mask"],
            max_new_tokens=6,
        )
        dirty = teacher_generate(
            model,
            noisy,
            batch["teacher_attention_mask"],
            batch["teacher_cross_attention_mask"],
            max_new_tokens=6,
        )
    assert torch.equal(clean, dirty)


def test_gradients_reach_student_not_teacher_through_alignment(batch: dict[str, torch.Tensor]) -> None:
    teacher, student = _tiny_t5(seed=1), _tiny_t5(seed=2).train()
    teacher_states = _teacher(teacher, batch)
    student_states = student_forward(
        student, batch["student_input_ids"], batch["student_attention_mask"], labels=batch["labels"]
    )
    width = batch["student_input_ids"].shape[1]
    teacher_encoder = [state[:, :width] for state in teacher_states.encoder_hidden_states]
    loss = layerwise_alignment(
        student_states.encoder_hidden_states, teacher_encoder, batch["input_alignment_mask"], [-1]
    ) + masked_mse(
        student_states.decoder_hidden_states[-1],
        teacher_states.decoder_hidden_states[-1],
        batch["decoder_mask"],
    )
    loss.backward()
    student_grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert student_grads and any(torch.count_nonzero(g) > 0 for g in student_grads)
    assert all(p.grad is None for p in teacher.parameters())


def _dropout_t5(p: float) -> T5ForConditionalGeneration:
    model = _tiny_t5(seed=5)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
    return model.train()


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_aligned_last_states_are_the_final_layer_norm_outputs_before_dropout(
    batch: dict[str, torch.Tensor], side: str
) -> None:
    """With dropout on (train mode), the last aligned state of each stack is final_layer_norm(x), while HF's own
    last state is that tensor dropped out: zero or scaled by 1/(1 − p) elementwise."""
    p = 0.5
    model = _dropout_t5(p)
    norm_inputs: dict[str, torch.Tensor] = {}
    stack_outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
        handles.append(
            stack.final_layer_norm.register_forward_pre_hook(
                lambda _m, args, name=name: norm_inputs.__setitem__(name, args[0].detach())
            )
        )
        handles.append(
            stack.register_forward_hook(
                lambda _m, _a, output, name=name: stack_outputs.__setitem__(name, output.last_hidden_state.detach())
            )
        )
    if side == "student":
        states = student_forward(
            model, batch["student_input_ids"], batch["student_attention_mask"], labels=batch["labels"]
        )
    else:
        states = _teacher(model, batch)
    for handle in handles:
        handle.remove()

    aligned = {"encoder": states.encoder_hidden_states[-1], "decoder": states.decoder_hidden_states[-1]}
    for name, state in aligned.items():
        assert state.requires_grad  # the student learns through it
        with torch.no_grad():
            expected = getattr(model, name).final_layer_norm(norm_inputs[name])
        torch.testing.assert_close(state.detach(), expected, rtol=0, atol=0)
        dropped = stack_outputs[name]
        kept = dropped != 0
        assert 0.3 < kept.float().mean() < 0.7  # dropout really was on
        assert not torch.equal(dropped, state.detach())
        torch.testing.assert_close(dropped[kept], state.detach()[kept] / (1 - p))
    assert len(states.encoder_hidden_states) == 3 and len(states.decoder_hidden_states) == 3


def test_aligned_last_states_equal_hf_states_without_dropout(batch: dict[str, torch.Tensor]) -> None:
    model = _tiny_t5()
    ids, mask = batch["student_input_ids"], batch["student_attention_mask"]
    states = student_forward(model, ids, mask, labels=batch["labels"])
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, labels=batch["labels"], output_hidden_states=True)
    for ours, theirs in (
        (states.encoder_hidden_states, reference.encoder_hidden_states),
        (states.decoder_hidden_states, reference.decoder_hidden_states),
    ):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b)
