"""KNIFE forward passes for any HF T5ForConditionalGeneration.

The KNIFE teacher encodes `task input + free-text rationale` with full self-attention, but its decoder may
cross-attend only the task-input positions: the rationale reaches the answer solely through the encoder states
of the input tokens, which are exactly the states the student (input only) is trained to match. HF T5 uses one
`attention_mask` for both the encoder and the cross-attention, so the teacher runs the encoder itself and then
calls the model with `encoder_outputs` and the narrower mask. Only standard HF calls are used
(`get_encoder()`, `forward`), so `model` can be the plain module or a DeepSpeed engine's
`.module`.

The states returned for alignment end in each stack's final layer-norm output, taken before T5Stack's final
dropout (HF's own `hidden_states[-1]` is after it): with dropout p on in the student, matching the dropped-out
states would pull the student's normalised states to (1 − p)× the teacher's, the minimiser of the expected MSE
under inverted dropout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput


@dataclass
class Seq2SeqStates:
    """Logits, optional LM loss and per-layer states of one seq2seq pass.

    With output_hidden_states each tuple runs from the embeddings to the final layer norm's output (before the
    stack's final dropout). Without it the encoder tuple holds only the encoder's output and the decoder's is empty.
    """

    logits: Tensor
    loss: Tensor | None
    encoder_hidden_states: tuple[Tensor, ...]
    decoder_hidden_states: tuple[Tensor, ...]
    cross_attentions: tuple[Tensor, ...] | None = None


def _check_decoder_inputs(labels: Tensor | None, decoder_input_ids: Tensor | None) -> None:
    if labels is None and decoder_input_ids is None:
        raise ValueError("pass labels (teacher forcing) or decoder_input_ids so the decoder has inputs")


def _stack(model: nn.Module, side: str) -> nn.Module:
    """model.get_encoder() or get_decoder(), looked up by name: torch types a Module's other attributes as
    Tensor | Module, which would make the call a type error."""
    get_stack: Callable[[], nn.Module] = getattr(model, f"get_{side}")
    return get_stack()


def encode(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, **kwargs: bool) -> BaseModelOutput:
    """The encoder alone, so a caller can choose what the decoder cross-attends to."""
    return _stack(model, "encoder")(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)


@contextlib.contextmanager
def final_norm_outputs(model: nn.Module, capture: bool = True) -> Iterator[dict[str, Tensor]]:
    """Within the block, the latest output of the encoder's and the decoder's `final_layer_norm` (keys "encoder",
    "decoder"): the stacks' last states before their final dropout. Forward hooks on the norm modules, which
    DeepSpeed ZeRO-3 leaves alone (it gathers parameters in its own hooks around every module's forward)."""
    captured: dict[str, Tensor] = {}
    if not capture:
        yield captured
        return

    def keep(side: str):
        return lambda _module, _inputs, output: captured.__setitem__(side, output)

    norms = {side: _stack(model, side).get_submodule("final_layer_norm") for side in ("encoder", "decoder")}
    handles = [norm.register_forward_hook(keep(side)) for side, norm in norms.items()]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _before_final_dropout(states: tuple[Tensor, ...] | None, final_norm: Tensor | None) -> tuple[Tensor, ...]:
    """HF's hidden-state tuple with its last (dropped-out) entry replaced by the final layer norm's output."""
    if not states:
        return ()
    assert final_norm is not None, "hidden states come back only while final_norm_outputs captures"
    return (*states[:-1], final_norm)


def _states(
    output, encoder_outputs: BaseModelOutput, output_attentions: bool, final_norms: dict[str, Tensor]
) -> Seq2SeqStates:
    encoder_states = _before_final_dropout(encoder_outputs.hidden_states, final_norms.get("encoder"))
    if not encoder_states:
        assert encoder_outputs.last_hidden_state is not None, "an encoder pass always returns its last states"
        encoder_states = (encoder_outputs.last_hidden_state,)
    return Seq2SeqStates(
        logits=output.logits,
        loss=output.loss,
        encoder_hidden_states=encoder_states,
        decoder_hidden_states=_before_final_dropout(output.decoder_hidden_states, final_norms.get("decoder")),
        cross_attentions=tuple(output.cross_attentions) if output_attentions else None,
    )


def teacher_forward(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    cross_attention_mask: Tensor,
    labels: Tensor | None = None,
    output_hidden_states: bool = True,
    decoder_input_ids: Tensor | None = None,
    output_attentions: bool = False,
) -> Seq2SeqStates:
    """Encode input + FTR under attention_mask; decode cross-attending only cross_attention_mask positions."""
    _check_decoder_inputs(labels, decoder_input_ids)
    flags = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
    with final_norm_outputs(model, capture=output_hidden_states) as final_norms:
        encoder_outputs = encode(model, input_ids, attention_mask, **flags)
        output = model(
            encoder_outputs=encoder_outputs,
            attention_mask=cross_attention_mask,
            labels=labels,
            decoder_input_ids=decoder_input_ids,
            return_dict=True,
            **flags,
        )
    return _states(output, encoder_outputs, output_attentions, final_norms)


def student_forward(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor | None = None,
    output_hidden_states: bool = True,
    decoder_input_ids: Tensor | None = None,
    output_attentions: bool = False,
) -> Seq2SeqStates:
    """Plain seq2seq pass on the task input, returning the states KNIFE aligns to the teacher's."""
    _check_decoder_inputs(labels, decoder_input_ids)
    with final_norm_outputs(model, capture=output_hidden_states) as final_norms:
        output = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            decoder_input_ids=decoder_input_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
    encoder_outputs = BaseModelOutput(
        last_hidden_state=output.encoder_last_hidden_state, hidden_states=output.encoder_hidden_states
    )
    return _states(output, encoder_outputs, output_attentions, final_norms)
