"""Ingesting LLM rationales from the shared schema, KARD's released JSON and OpenAI chat-completion JSONL."""

import gzip
import json
from pathlib import Path

import pytest

from trainer.data.example import DataError
from trainer.data.jsonl import read_examples
from trainer.kard.rationale_ingest import ingest, main

QUESTIONS = [
    {"id": "q1", "question": "Can fish climb trees?", "choices": ["yes", "no"], "answer_index": 1},
    {"id": "q2", "question": "Which animal swims?", "choices": ["cat", "fish", "rock", "bird"], "answer_index": 1,
     "rationales": ["old one"]},
]  # fmt: skip


@pytest.fixture
def questions(tmp_path: Path) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


def write(path: Path, rows: list, as_array: bool = False) -> Path:
    path.write_text(json.dumps(rows) if as_array else "".join(json.dumps(r) + "\n" for r in rows))
    return path


def completion(*texts: str, **extra: object) -> dict:
    return {"object": "chat.completion", "choices": [{"index": i, "message": {"role": "assistant", "content": t}}
                                                       for i, t in enumerate(texts)], **extra}  # fmt: skip


def test_kard_json_matches_by_question_stem_and_strips_the_answer_suffix(questions: Path, tmp_path: Path) -> None:
    rows = [
        {"question": "Can fish climb trees? A. yes B. no", "reasoning": "Fish have no legs.\nAnswer: B", "answer": 1},
        {"question": "Which animal swims? A. cat B. fish C. rock D. bird", "reasoning": "Fish swim.\nAnswer: B",
         "answer": "1"},
    ]  # fmt: skip
    found = ingest(questions, write(tmp_path / "kard.json", rows, as_array=True), "kard")
    assert found == {"q1": ["Fish have no legs."], "q2": ["Fish swim."]}
    assert ingest(questions, write(tmp_path / "kard.jsonl", rows), "kard") == found


def test_kard_json_refuses_a_label_that_disagrees_with_the_question(questions: Path, tmp_path: Path) -> None:
    rows = [{"question": "Can fish climb trees? A. yes B. no", "reasoning": "They can.\nAnswer: A", "answer": 0}]
    with pytest.raises(DataError, match=r"kard\.json: item 0: answer 0 disagrees with question 'q1'"):
        ingest(questions, write(tmp_path / "kard.json", rows, as_array=True), "kard")
    unknown = [{"question": "What is love? A. x B. y", "reasoning": "r", "answer": 0}]
    with pytest.raises(DataError, match="item 0: question 'What is love"):
        ingest(questions, write(tmp_path / "kard2.json", unknown, as_array=True), "kard")


def test_openai_batch_output_and_metadata_lines(questions: Path, tmp_path: Path) -> None:
    rows = [
        {"custom_id": "q1", "response": {"status_code": 200, "body": completion("No legs.", "Water only.")},
         "error": None},
        completion("Fish have fins.", metadata={"question_id": "q2"}),
    ]  # fmt: skip
    found = ingest(questions, write(tmp_path / "batch.jsonl", rows), "openai")
    assert found == {"q1": ["No legs.", "Water only."], "q2": ["Fish have fins."]}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"custom_id": "q9", "response": {"body": {"choices": []}}}', "batch.jsonl:2: question id 'q9' is not"),
        ('{"custom_id": "q1", "response": {"body": {}}}', "batch.jsonl:2: no 'choices'"),
        ('{"custom_id": "q1", "error": {"message": "rate limited"}}', "batch.jsonl:2: the batch request for 'q1'"),
        ('{"choices": [{"message": {"content": "x"}}]}', "batch.jsonl:2: no question id"),
        ("{not json", "batch.jsonl:2: invalid JSON"),
    ],
)
def test_openai_malformed_lines_are_named_by_file_and_line(
    questions: Path, tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "batch.jsonl"
    path.write_text(json.dumps({"custom_id": "q1", "response": {"body": completion("ok")}}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        ingest(questions, path, "openai")


def test_shared_schema_rows_merge_by_id(questions: Path, tmp_path: Path) -> None:
    found = ingest(questions, write(tmp_path / "r.jsonl", [{"id": "q2", "rationales": ["Fins help.", " "]}]), "shared")
    assert found == {"q2": ["Fins help."]}
    with pytest.raises(DataError, match=r"r2\.jsonl:1: field 'rationales' must be a list of strings"):
        ingest(questions, write(tmp_path / "r2.jsonl", [{"id": "q2", "rationales": "x"}]), "shared")


def test_cli_appends_or_replaces_and_never_overwrites_its_input(questions: Path, tmp_path: Path, capsys) -> None:
    rationales = write(tmp_path / "r.jsonl", [{"id": "q2", "rationales": ["Fins help."]}])
    out = tmp_path / "out" / "merged.jsonl.gz"
    assert main(["--questions", str(questions), "--rationales", str(rationales), "--format", "shared",
                 "--out", str(out), "--source", "gpt-test"]) == 0  # fmt: skip
    merged = {ex.id: ex for ex in read_examples(out)}
    assert merged["q2"].rationales == ("old one", "Fins help.") and merged["q1"].rationales == ()
    with gzip.open(out, "rt") as handle:
        assert json.loads(handle.readlines()[1])["rationale_source"] == "gpt-test"
    assert json.loads(capsys.readouterr().out.strip())["rationales"] == 1
    assert main(["--questions", str(questions), "--rationales", str(rationales), "--format", "shared",
                 "--out", str(out), "--replace"]) == 0  # fmt: skip
    assert {ex.id: ex for ex in read_examples(out)}["q2"].rationales == ("Fins help.",)
    before = questions.read_text()
    assert main(["--questions", str(questions), "--rationales", str(rationales), "--format", "shared",
                 "--out", str(questions)]) == 2  # fmt: skip
    assert questions.read_text() == before
    bad = write(tmp_path / "bad.jsonl", [{"id": "nope", "rationales": []}])
    assert main(["--questions", str(questions), "--rationales", str(bad), "--format", "shared",
                 "--out", str(tmp_path / "x.jsonl.gz")]) == 2  # fmt: skip
    assert "bad.jsonl:1: id 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl.gz").exists()
