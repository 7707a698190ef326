import gzip
import json
from pathlib import Path

import pytest

from trainer.config.loader import load_config
from trainer.data.example import DataError
from trainer.data.jsonl import read_examples
from trainer.data.registry import load_splits, registered_datasets

ROW = {
    "id": "q1",
    "question": "Is it?",
    "choices": ["yes", "no"],
    "answer_index": 0,
    "answer": "yes",
    "rationales": ["Because."],
    "facts": ["A fact."],
}


def write_rows(path: Path, rows: list[object], gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def test_registry_names() -> None:
    assert {"strategyqa", "obqa", "medqa", "jsonl"} <= set(registered_datasets())


def test_strategyqa_holds_out_a_stable_dev_split(shared_data: Path) -> None:
    cfg = load_config(overrides=[f"data.data_dir={shared_data}"])
    first, second = load_splits(cfg.data, seed=1), load_splits(cfg.data, seed=2)
    assert len(first.train) + len(first.dev) == 1283
    assert [ex.id for ex in first.dev] == [ex.id for ex in second.dev]
    assert not {ex.id for ex in first.dev} & {ex.id for ex in first.train}
    assert first.train[0].facts and len(first.train[0].rationales) == 10


def test_obqa_and_medqa_load(shared_data: Path) -> None:
    obqa = load_splits(load_config(overrides=[f"data.data_dir={shared_data}", "data.dataset=obqa"]).data, 0)
    assert (len(obqa.train), len(obqa.dev)) == (4957, 500)
    assert len(obqa.train[0].choices) == 4
    medqa = load_splits(load_config(overrides=[f"data.data_dir={shared_data}", "data.dataset=medqa"]).data, 0)
    assert len(medqa.train) + len(medqa.dev) == 1272
    assert not medqa.dev[0].rationales


def test_train_fraction_is_seeded_and_keeps_order(shared_data: Path) -> None:
    cfg = load_config(overrides=[f"data.data_dir={shared_data}", "data.train_fraction=0.1"])
    a, b, c = (load_splits(cfg.data, seed) for seed in (3, 3, 4))
    assert len(a.train) == round(1155 * 0.1)
    assert [e.id for e in a.train] == [e.id for e in b.train] != [e.id for e in c.train]
    assert [e.id for e in a.train] == sorted(e.id for e in a.train)


def test_generic_jsonl_gz_with_dev_split(tmp_path: Path) -> None:
    rows = [{**ROW, "id": f"q{i}"} for i in range(20)]
    path = write_rows(tmp_path / "qa.jsonl.gz", rows, gz=True)
    cfg = load_config(overrides=["data.dataset=jsonl", f"data.train_path={path}", "data.dev_fraction=0.25"])
    splits = load_splits(cfg.data, 0)
    assert (len(splits.train), len(splits.dev)) == (15, 5)


def test_unknown_dataset_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'nope'.*strategyqa"):
        load_splits(load_config(overrides=["data.dataset=nope"]).data, 0)
    with pytest.raises(DataError, match="needs data.train_path"):
        load_splits(load_config(overrides=["data.dataset=jsonl"]).data, 0)
    with pytest.raises(DataError, match="not found"):
        load_splits(load_config(overrides=[f"data.data_dir={tmp_path}"]).data, 0)


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ('{"id": "x", "question": ', "invalid JSON"),
        ({k: v for k, v in ROW.items() if k != "question"}, "missing field 'question'"),
        ({**ROW, "answer_index": 5}, "'answer_index' 5 is out of range"),
        ({**ROW, "answer_index": True}, "'answer_index' must be int"),
        ({**ROW, "answer": "no"}, "'answer' 'no' != choices"),
        ({**ROW, "choices": ["only"]}, "at least two"),
        ({**ROW, "rationales": "text"}, "'rationales' must be a list of strings"),
        ({**ROW, "id": "q0"}, "duplicate id 'q0' \\(first on line 1\\)"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path: Path, bad_row: object, message: str) -> None:
    path = write_rows(tmp_path / "qa.jsonl", [{**ROW, "id": "q0"}, "", bad_row])
    with pytest.raises(DataError, match=message) as info:
        read_examples(path)
    assert f"{path}:3" in str(info.value)
