"""Benchmarks run each training as its own `trainer.train` process (one DeepSpeed rank, no Ray overhead)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A single-rank run picks its own rendezvous; one inherited from the caller (a process that already initialised
# torch.distributed) would put parallel runs on one MASTER_PORT.
DISTRIBUTED_ENV = frozenset({"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"})


@dataclass(frozen=True)
class ProcessResult:
    """The JSON line `trainer.train` prints at the end, and how long the whole process took."""

    final: dict[str, Any]
    wall_s: float

    @property
    def metrics(self) -> dict[str, float]:
        return self.final["metrics"]


def run_trainer_process(args: list[str], log: Path, evaluate: bool = False) -> ProcessResult:
    """Run `python -m trainer.train [--evaluate] ARGS` with its output in `log`; a failure raises with its tail."""
    env = {
        **{k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV},
        "OMP_NUM_THREADS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "TOKENIZERS_PARALLELISM": "false",
        "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
    }
    command = [sys.executable, "-m", "trainer.train", *(["--evaluate"] if evaluate else []), *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    lines = log.read_text().splitlines()
    if code != 0:
        raise RuntimeError(f"trainer.train failed (exit {code}); see {log}:\n" + "\n".join(lines[-20:]))
    final = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    return ProcessResult(final, time.perf_counter() - start)
