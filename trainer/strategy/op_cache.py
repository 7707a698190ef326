"""DeepSpeed's JIT-compiled CPU ops, cached once per Python environment and built ahead of the first job.

Every CPU process group DeepSpeed initialises loads `deepspeed_shm_comm` (~45 s to compile on 2 cores), and
optimizer offload loads `cpu_adam` (~105 s). torch caches them in one directory per Python/CUDA version
(`~/.cache/torch_extensions/py311_cpu`) shared by every environment on the machine, but the compile command holds
the environment's own paths: two checkouts (a CI checkout beside a dev one) rebuild each other's ops on every
first use, and that compile landed inside the measured gap between submitting a job and its first step.

    python -m trainer.strategy.op_cache            # build shm_comm (run by `make venv`)
    python -m trainer.strategy.op_cache cpu_adam   # and/or the offload optimizer
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

EXTENSIONS_ENV = "TORCH_EXTENSIONS_DIR"
# Our name -> DeepSpeed's op builder class (deepspeed.ops.op_builder).
CPU_OPS = {"shm_comm": "ShareMemCommBuilder", "cpu_adam": "CPUAdamBuilder"}


def pin_op_cache() -> str | None:
    """Point torch's extension cache at this environment's own directory unless the user chose one (the image
    does); left alone where the environment is read-only. Returns the directory in use, if we set or kept one."""
    if EXTENSIONS_ENV in os.environ:
        return os.environ[EXTENSIONS_ENV]
    if not os.access(sys.prefix, os.W_OK):
        return None
    os.environ[EXTENSIONS_ENV] = str(environment_op_dir(Path(sys.prefix)))  # the venv's, or the image Python's
    return os.environ[EXTENSIONS_ENV]


def environment_op_dir(prefix: Path) -> Path:
    """The environment's op directory, one per path it is reached by. An op's compile command holds the paths
    this interpreter sees (torch's and DeepSpeed's sources under `prefix`): one venv symlinked into several
    checkouts would otherwise rebuild shm_comm (45-70 s) in one directory each time another checkout used it."""
    if prefix.resolve() == prefix:
        return prefix / "torch_extensions"
    return prefix / f"torch_extensions-{hashlib.sha256(str(prefix).encode()).hexdigest()[:12]}"


def build_ops(names: list[str]) -> dict[str, float]:
    """Compile (or load, when cached) the named ops now; seconds each took."""
    pin_op_cache()
    from deepspeed.accelerator import get_accelerator

    seconds = {}
    for name in names:
        builder = get_accelerator().create_op_builder(CPU_OPS[name])
        if builder is None:
            accelerator = get_accelerator().device_name()
            raise SystemExit(f"op {name}: DeepSpeed's {accelerator} accelerator has no {CPU_OPS[name]}")
        started = time.perf_counter()
        builder.load(verbose=False)
        seconds[name] = time.perf_counter() - started
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ops", nargs="*", help=f"of {sorted(CPU_OPS)}; default: shm_comm")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.ops) - set(CPU_OPS))
    if unknown:
        parser.error(f"unknown op(s) {unknown}; known: {sorted(CPU_OPS)}")
    for name, seconds in build_ops(args.ops or ["shm_comm"]).items():
        print(f"op {name}: ready in {seconds:.1f} s ({os.environ.get(EXTENSIONS_ENV, 'torch default cache')})")


if __name__ == "__main__":
    main()
