"""The strategy's CUDA-only decisions, checked on CPU: which GPU a rank takes, and refusing device mismatches.

No GPU exists here, so these call the decision functions directly (and the constructor's refusal); the GPU runs
themselves are `python -m ray_jobs.benchmarks.gpu` on a GPU machine (README, "Measured on a GPU").
"""

import pytest
import torch

from trainer.config.loader import load_config
from trainer.strategy.deepspeed_strategy import DeepSpeedStrategy, check_accelerator, cuda_device_index


def test_matching_accelerators_pass() -> None:
    check_accelerator(on_gpu=True, accelerator="cuda")
    check_accelerator(on_gpu=False, accelerator="cpu")


def test_gpu_run_with_deepspeed_forced_to_cpu_names_ds_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    with pytest.raises(RuntimeError, match=r"run.use_gpu=true .* accelerator is 'cpu' \(DS_ACCELERATOR=cpu\)"):
        check_accelerator(on_gpu=True, accelerator="cpu")


def test_cpu_run_on_a_gpu_machine_asks_for_ds_accelerator_cpu() -> None:
    with pytest.raises(RuntimeError, match="run.use_gpu=false but DeepSpeed picked the 'cuda' .*DS_ACCELERATOR=cpu"):
        check_accelerator(on_gpu=False, accelerator="cuda")


def test_a_launched_rank_takes_the_gpu_of_its_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cuda_device_index(local_rank=0, device_count=1) == 0
    assert cuda_device_index(local_rank=3, device_count=8) == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    with pytest.raises(RuntimeError, match=r"LOCAL_RANK=1 but this process sees 1 CUDA .*CUDA_VISIBLE_DEVICES=2"):
        cuda_device_index(local_rank=1, device_count=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_use_gpu_without_cuda_is_refused_instead_of_training_on_cpu() -> None:
    with pytest.raises(RuntimeError, match="run.use_gpu=true but torch .* sees no CUDA device"):
        DeepSpeedStrategy(load_config(overrides=["run.use_gpu=true"]))
