"""DeepSpeed's Muon module, which ZeRO imports for isinstance checks, costs no torch.compile set-up unless a run
trains with Muon. Each case runs in a fresh interpreter: the import happens once a process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
PROBE = (
    "import os, sys\n"
    "from trainer.strategy.deepspeed_strategy import import_muon_uncompiled\n"
    "import_muon_uncompiled(sys.argv[1])\n"
    "import deepspeed.runtime.zero.muon.original_muon as muon\n"
    "print('torch._inductor.compile_fx' in sys.modules, hasattr(muon.muon_update, '_torchdynamo_orig_callable'),"
    " 'TORCHDYNAMO_DISABLE' in os.environ)\n"
)


@pytest.mark.parametrize(("optimizer", "compiled"), [("AdamW", False), ("Muon", True)])
def test_muon_kernels_are_compiled_only_for_a_muon_run(optimizer: str, compiled: bool) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("TORCHDYNAMO_DISABLE", None)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, optimizer], capture_output=True, text=True, env=env, timeout=300, cwd=REPO_ROOT
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    inductor_loaded, kernel_wrapped, env_left_set = proc.stdout.split()[-3:]
    assert (inductor_loaded, kernel_wrapped, env_left_set) == (str(compiled), str(compiled), "False")
