"""Modules that Ray Train workers, the job driver's helpers and the submitter import leave MLflow, `datasets`,
DeepSpeed and transformers' modelling code to the functions that use them: each costs 0.5-3 s of start-up in
every process that imports it (rank 1 never tracks; Ray Train's controller only unpickles the train function).
Each case runs in a fresh interpreter, where nothing else has imported them yet."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("mlflow", "datasets", "deepspeed", "transformers.modeling_utils")


def loaded_after_import(module: str) -> list[str]:
    probe = f"import sys, {module}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


@pytest.mark.parametrize(
    "module",
    [
        "trainer.tracking.mlflow_tracker",
        "trainer.tracking.metric_buffer",
        "trainer.data.feature_cache",
        "trainer.strategy.deepspeed_strategy",
        "trainer.models.factory",
        "trainer.models.sources",
        "trainer.models.late_interaction",
        "ray_jobs.stage_group",
        "ray_jobs.submit",
    ],
)
def test_importing_leaves_heavy_libraries_unloaded(module: str) -> None:
    assert loaded_after_import(module) == []


def test_importing_the_training_loop_leaves_heavy_libraries_unloaded() -> None:
    assert loaded_after_import("trainer.loop") == []
