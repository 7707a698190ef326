"""Bring LLM rationales into the shared question schema, from the formats they come in.

    python -m trainer.kard.rationale_ingest --questions train.jsonl.gz --format openai \\
        --rationales batch_output.jsonl --out train_with_rationales.jsonl.gz [--replace] [--source gpt-4o-mini]

Formats:
- shared: rows in the shared schema (`id`, `rationales`), merged by id;
- kard: KARD's released preprocessed JSON (a list, or JSONL, of {"question", "reasoning", "answer"}), where the
  question text carries its options ("<stem> A. <opt> B. <opt>") and the reasoning ends in "\\nAnswer: <letter>";
  matched to our questions by stem, checked against the gold label;
- openai: chat-completion JSONL, either OpenAI Batch API output lines ({"custom_id": <question id>,
  "response": {"body": <chat.completion>}}) or chat.completion objects carrying `metadata.question_id`; every
  choice's message content becomes one rationale (n=10 sampling gives ten).
Malformed input stops with file:line (or file:item) and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from trainer.data.example import DataError, QAExample
from trainer.data.formatting import OPTION_LETTERS
from trainer.data.jsonl import iter_json_rows, open_text, read_examples, write_jsonl_gz

FORMATS = ("shared", "kard", "openai")
_KARD_ANSWER_SUFFIX = re.compile(r"\s*\n?Answer:\s*\(?([A-J])\)?\s*$")


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _kard_items(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, item) from a JSON array or JSONL file."""
    with open_text(path) as handle:
        head = handle.read(1)
        while head and head.isspace():
            head = handle.read(1)
    if head == "[":
        with open_text(path) as handle:
            try:
                items = json.load(handle)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        for index, item in enumerate(items):
            yield f"{path}: item {index}", item
    else:
        for line_no, item in iter_json_rows(path):
            yield f"{path}:{line_no}", item


def _match_kard_question(text: str, by_stem: dict[str, QAExample], where: str) -> QAExample:
    """KARD's question = stem + " A. opt B. opt ..."; the longest known stem that starts it wins."""
    normalised = _normalise(text)
    cut = re.search(r"\sa\.\s", normalised)
    stem = normalised[: cut.start()] if cut else normalised
    if stem in by_stem:
        return by_stem[stem]
    candidates = [s for s in by_stem if normalised.startswith(s)]
    if not candidates:
        raise DataError(f"{where}: question {text[:80]!r} matches none of the questions")
    return by_stem[max(candidates, key=len)]


def read_kard(path: Path, questions: list[QAExample]) -> dict[str, list[str]]:
    """Rationales per question id from KARD's preprocessed JSON, with their "Answer: X" suffix removed."""
    by_stem = {_normalise(ex.question): ex for ex in questions}
    found: dict[str, list[str]] = {}
    for where, item in _kard_items(path):
        if not isinstance(item, dict) or not isinstance(item.get("question"), str):
            raise DataError(f"{where}: expected an object with a string 'question'")
        reasoning, answer = item.get("reasoning"), item.get("answer")
        if not isinstance(reasoning, str) or not reasoning.strip():
            raise DataError(f"{where}: field 'reasoning' must be a non-empty string")
        example = _match_kard_question(item["question"], by_stem, where)
        suffix = _KARD_ANSWER_SUFFIX.search(reasoning)
        label = OPTION_LETTERS.index(suffix.group(1)) if suffix else None
        if answer is not None:
            try:
                label = int(answer)
            except (TypeError, ValueError):
                raise DataError(f"{where}: field 'answer' must be a choice index, got {answer!r}") from None
        if label is not None and label != example.answer_index:
            raise DataError(
                f"{where}: answer {label} disagrees with question {example.id!r} (gold {example.answer_index})"
            )
        text = reasoning[: suffix.start()] if suffix else reasoning
        found.setdefault(example.id, []).append(text.strip())
    return found


def _completion_texts(completion: Any, where: str) -> list[str]:
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(choices, list) or not choices:
        raise DataError(f"{where}: no 'choices' in the chat completion")
    texts = []
    for index, choice in enumerate(choices):
        content = (choice.get("message") or {}).get("content") if isinstance(choice, dict) else None
        if not isinstance(content, str):
            raise DataError(f"{where}: choices[{index}].message.content must be a string")
        if content.strip():
            texts.append(content.strip())
    return texts


def read_openai(path: Path, known_ids: set[str]) -> dict[str, list[str]]:
    """Rationales per question id from Batch API output or chat.completion objects with metadata.question_id."""
    found: dict[str, list[str]] = {}
    for line_no, row in iter_json_rows(path):
        where = f"{path}:{line_no}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object")
        if "custom_id" in row:
            if row.get("error"):
                raise DataError(f"{where}: the batch request for {row['custom_id']!r} failed: {row['error']}")
            question_id, completion = row["custom_id"], (row.get("response") or {}).get("body")
        else:
            question_id, completion = (row.get("metadata") or {}).get("question_id"), row
        if not isinstance(question_id, str):
            raise DataError(f"{where}: no question id (custom_id, or metadata.question_id)")
        if question_id not in known_ids:
            raise DataError(f"{where}: question id {question_id!r} is not in the questions file")
        found.setdefault(question_id, []).extend(_completion_texts(completion, where))
    return found


def read_shared(path: Path, known_ids: set[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line_no, row in iter_json_rows(path):
        where = f"{path}:{line_no}"
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise DataError(f"{where}: expected an object with a string 'id'")
        rationales = row.get("rationales")
        if not isinstance(rationales, list) or not all(isinstance(r, str) for r in rationales):
            raise DataError(f"{where}: field 'rationales' must be a list of strings")
        if row["id"] not in known_ids:
            raise DataError(f"{where}: id {row['id']!r} is not in the questions file")
        found.setdefault(row["id"], []).extend(r.strip() for r in rationales if r.strip())
    return found


def ingest(questions_path: Path, rationales_path: Path, fmt: str) -> dict[str, list[str]]:
    questions = read_examples(questions_path)
    known = {ex.id for ex in questions}
    if fmt == "kard":
        return read_kard(rationales_path, questions)
    if fmt == "openai":
        return read_openai(rationales_path, known)
    if fmt == "shared":
        return read_shared(rationales_path, known)
    raise ValueError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")


def merged_rows(
    questions: list[QAExample], rationales: dict[str, list[str]], replace_existing: bool, source: str | None
) -> list[dict[str, Any]]:
    """Question rows in the shared schema with the new rationales appended (or replacing the old ones)."""
    rows = []
    for example in questions:
        new = rationales.get(example.id, [])
        merged = new if replace_existing else [*example.rationales, *new]
        updated = replace(example, rationales=tuple(merged))
        row = {
            "id": updated.id,
            "question": updated.question,
            "choices": list(updated.choices),
            "answer_index": updated.answer_index,
            "answer": updated.answer,
            "rationales": list(updated.rationales),
            "facts": list(updated.facts),
            **updated.extra,
        }
        if source and new:
            row["rationale_source"] = source
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=Path, required=True, help="question file in the shared schema")
    parser.add_argument("--rationales", type=Path, required=True, help="rationales to bring in")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="output .jsonl.gz in the shared schema")
    parser.add_argument("--replace", action="store_true", help="replace existing rationales instead of appending")
    parser.add_argument("--source", default=None, help="rationale_source to record on updated rows")
    args = parser.parse_args(argv)
    try:
        found = ingest(args.questions, args.rationales, args.format)
        questions = read_examples(args.questions)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out.resolve() == args.questions.resolve():
        print("error: --out must differ from --questions (nothing is overwritten in place)", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_gz(merged_rows(questions, found, args.replace, args.source), args.out)
    total = sum(len(v) for v in found.values())
    print(json.dumps({"questions": len(questions), "with_new_rationales": len(found), "rationales": total}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
