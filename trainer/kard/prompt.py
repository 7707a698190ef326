"""The one KARD prompt contract: training and inference inputs come from this function alone.

    <instruction> question: <question> options: (A) .. (B) .. knowledge: [1] <title>. <text> [2] ...

The question and its options come first and are never cut; the passages share what is left of the token budget
(equal shares, and what a short passage leaves unused goes to the longer ones), so a long passage is cut, never
the question. Built in token space, so the budget is exact for any tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from trainer.data.example import DataError, QAExample
from trainer.data.formatting import format_question

KNOWLEDGE_CUE = "knowledge:"


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str

    def render(self, position: int) -> str:
        return f"[{position}] {self.title}. {self.text}"


def build_prompt_ids(
    encode_plain: Callable[[str], list[int]],
    eos_token_id: int,
    instruction: str,
    example: QAExample,
    passages: Sequence[Passage],
    max_length: int,
) -> list[int]:
    """Token ids of the prompt (ending in EOS), at most max_length long."""
    head = encode_plain(f"{instruction} {format_question(example)}".strip())
    if len(head) + 1 > max_length:
        raise DataError(
            f"example {example.id!r}: the instruction, question and options take {len(head) + 1} tokens, more than "
            f"data.max_input_length={max_length}; raise it so no question is cut"
        )
    room = max_length - len(head) - 1
    body: list[int] = []
    if passages:
        cue = encode_plain(KNOWLEDGE_CUE)
        if len(cue) < room:
            body, room = list(cue), room - len(cue)
            pieces = [encode_plain(p.render(i + 1)) for i, p in enumerate(passages)]
            allowed = [0] * len(pieces)
            for rank, index in enumerate(sorted(range(len(pieces)), key=lambda i: len(pieces[i]))):
                allowed[index] = min(len(pieces[index]), room // (len(pieces) - rank))
                room -= allowed[index]
            for piece, size in zip(pieces, allowed, strict=True):
                body += piece[:size]
    return head + body + [eos_token_id]
