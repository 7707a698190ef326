"""The model-sized ZeRO buckets (trainer.strategy.ds_config.zero_bucket_elements) across two real ranks: ZeRO-1, 2
and 3 train, and a run checkpointed midway and resumed into differently initialised engines ends bit-identical to
one trained straight through (both optimizer parameter groups decayed differently); the logged gradient norm is
the global one on every rank."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.strategy.ds_config import zero_bucket_elements

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]


def test_model_sized_buckets_train_and_resume_bit_exactly(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config("run.num_workers=2")
    overrides = [
        f"data.data_dir={cfg.data.data_dir}",
        "data.max_train_examples=32",
        "model.tokenizer_vocab_size=600",
        "optim.micro_batch_size=4",
        "optim.max_steps=4",
        "optim.warmup_steps=1",
        "optim.weight_decay=0.1",  # the decayed and the undecayed parameter group both round-trip
        "run.num_workers=2",
        f"run.output_dir={tmp_path / 'runs'}",
    ]
    torchrun = Path(sys.executable).with_name("torchrun")
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path}
    command = [str(torchrun), "--standalone", "--nproc-per-node", "2", str(HERE / "resume_ranks.py"), str(tmp_path)]
    # ~60 s on an idle 2-core machine; the timeout is a safety net.
    proc = subprocess.run([*command, *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    report = json.loads((tmp_path / "report.json").read_text())
    for stage in ("zero1", "zero2", "zero3"):
        case = report[stage]
        assert case["buckets"]["reduce_bucket_size"] == zero_bucket_elements(case["parameters"])
        if stage != "zero3":
            assert case["buckets"]["allgather_bucket_size"] == zero_bucket_elements(case["parameters"])
        assert case["straight"] == case["resumed"], stage  # the same losses, to the last bit
        assert case["straight"][-1] < case["straight"][0], stage  # it trains
        # The step's norm is all-reduced: every rank logs the same one, the norm of the ranks' mean gradient.
        rank0, rank1 = case["grad_norms"]
        assert rank0 == rank1, stage
        assert rank0["straight"] == rank0["resumed"], stage
        assert rank0["straight"][0] == pytest.approx(case["reference_grad_norm"], rel=1e-5), stage
        straight = load_file(tmp_path / stage / "straight" / "model.safetensors")
        resumed = load_file(tmp_path / stage / "resumed" / "model.safetensors")
        assert straight.keys() == resumed.keys()
        for key, value in straight.items():
            torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=f"{stage} {key}")
