"""The one in-memory shape every question set is converted to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class DataError(ValueError):
    """A data file or row that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class QAExample:
    """A multiple-choice question with optional free-text rationales (LLM) and human facts."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer_index: int
    rationales: tuple[str, ...] = ()
    facts: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def answer(self) -> str:
        return self.choices[self.answer_index]

    @classmethod
    def from_row(cls, row: Any, where: str) -> QAExample:
        """Validate one decoded JSON row; `where` is `file:line` for the error message."""
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for key, kind in (("id", str), ("question", str), ("choices", list), ("answer_index", int)):
            if key not in row:
                raise DataError(f"{where}: missing field {key!r}")
            if not isinstance(row[key], kind) or (kind is int and isinstance(row[key], bool)):
                raise DataError(f"{where}: field {key!r} must be {kind.__name__}, got {type(row[key]).__name__}")
        choices = row["choices"]
        if len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
            raise DataError(f"{where}: field 'choices' must hold at least two non-empty strings")
        if not 0 <= row["answer_index"] < len(choices):
            raise DataError(
                f"{where}: field 'answer_index' {row['answer_index']} is out of range 0..{len(choices) - 1}"
            )
        if "answer" in row and row["answer"] != choices[row["answer_index"]]:
            raise DataError(f"{where}: field 'answer' {row['answer']!r} != choices[answer_index]")
        texts: dict[str, tuple[str, ...]] = {}
        for key in ("rationales", "facts"):
            value = row.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DataError(f"{where}: field {key!r} must be a list of strings")
            texts[key] = tuple(v.strip() for v in value if v.strip())
        known = {"id", "question", "choices", "answer_index", "answer", "rationales", "facts"}
        return cls(
            id=row["id"],
            question=row["question"].strip(),
            choices=tuple(c.strip() for c in choices),
            answer_index=row["answer_index"],
            rationales=texts["rationales"],
            facts=texts["facts"],
            extra={k: v for k, v in row.items() if k not in known},
        )
