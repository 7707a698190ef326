"""ZeRO-3 across two real processes (torchrun, gloo): sharded save, resume, consolidated exports (the collective
export of a best dev step during training included)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from trainer.data.formatting import format_question
from trainer.data.registry import load_splits

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[3]


def torchrun(cfg_overrides: list[str], cwd: Path) -> dict:
    """Two ranks of this repository's trainer (PYTHONPATH: the cwd is elsewhere, and an installed copy may differ).
    Each run takes ~30 s on an idle 2-core machine; the timeout is a safety net."""
    torchrun_bin = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun_bin), "--standalone", "--nproc-per-node", "2", "-m", "trainer.train", *cfg_overrides]
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path}
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def test_zero3_two_ranks_save_resume_export(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config("ds.template=zero3", "run.num_workers=2")
    base = [
        f"data.data_dir={cfg.data.data_dir}",
        "data.max_train_examples=64",
        "data.max_dev_examples=10",
        "data.max_input_length=64",
        "data.max_target_length=8",
        "model.tokenizer_vocab_size=600",
        "optim.micro_batch_size=4",
        "tracking.log_every=1",
        f"tracking.tracking_uri={cfg.tracking.tracking_uri}",
        f"run.output_dir={cfg.run.output_dir}",
        "ds.template=zero3",
        "run.save_every=2",
        "run.name=z3",
    ]
    first = torchrun([*base, "optim.max_steps=3"], tmp_path)
    checkpoints = Path(cfg.run.output_dir) / "z3" / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step_3"
    shards = sorted(p.name for p in (checkpoints / "step_3" / "checkpoint").iterdir())
    assert any(name.startswith("zero_pp_rank_1") for name in shards)  # each rank wrote its own partition
    assert (checkpoints / "step_2").is_dir()  # the periodic checkpoint

    # With eval_every the second run exports its best dev step in the middle of training, on both ranks.
    second = torchrun([*base, "optim.max_steps=5", "run.eval_every=2"], tmp_path)
    assert second["global_step"] == 5 and second["mlflow_run_id"] == first["mlflow_run_id"]
    assert second["metrics"]["dev/best_step"] in (4, 5)  # the first run selected nothing (no eval_every)
    assert Path(second["export_dir"]) == Path(cfg.run.output_dir) / "z3" / "export"
    for export in {second["export_dir"], second["final_export_dir"]}:
        assert AutoModelForSeq2SeqLM.from_pretrained(export).config.d_model == 64
    client = mlflow.MlflowClient(cfg.tracking.tracking_uri)
    assert client.get_run(first["mlflow_run_id"]).data.tags["resumed_from_step"] == "3"
    losses = client.get_metric_history(first["mlflow_run_id"], "train/loss")
    assert sorted(m.step for m in losses) == [1, 2, 3, 4, 5]

    # The last step's consolidated export reproduces the predictions the 2 sharded ranks made at the end.
    export = Path(second["final_export_dir"])
    model = AutoModelForSeq2SeqLM.from_pretrained(export).eval()
    # Built partitioned (zero.Init), yet the logged size is the full model's.
    logged_size = client.get_run(first["mlflow_run_id"]).data.metrics["model/num_parameters"]
    assert logged_size == sum(p.numel() for p in model.parameters())
    tokenizer = AutoTokenizer.from_pretrained(export)
    logged = mlflow.artifacts.download_artifacts(
        run_id=first["mlflow_run_id"], artifact_path="predictions/dev.jsonl", tracking_uri=cfg.tracking.tracking_uri
    )
    predictions = [json.loads(line) for line in Path(logged).read_text().splitlines()]
    dev = load_splits(cfg.data.model_copy(update={"max_dev_examples": 10}), cfg.run.seed).dev
    for example, prediction in zip(dev, predictions, strict=True):
        enc = tokenizer(format_question(example), return_tensors="pt")
        text = tokenizer.decode(model.generate(**enc, max_new_tokens=8)[0], skip_special_tokens=True)
        assert (example.id, text) == (prediction["id"], prediction["generated"])
