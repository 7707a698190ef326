"""MFU arithmetic and the device-name → bf16 peak table."""

import pytest

from trainer.perf.mfu import GPU_PEAKS, UnknownGpuError, gpu_peak, mfu, peak_bf16_flops


@pytest.mark.parametrize(
    ("device_name", "entry", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.5),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", "H100 NVL", 835.5),
        ("NVIDIA H200", "H200 SXM", 989.5),
        ("NVIDIA H200 NVL", "H200 NVL", 835.5),
        ("NVIDIA GH200 480GB", "GH200", 989.5),
        ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
        ("NVIDIA A100 80GB PCIe", "A100", 312.0),
        ("NVIDIA A10", "A10", 125.0),
        ("NVIDIA L4", "L4", 121.0),
        ("NVIDIA L40S", "L40S", 362.05),
        ("NVIDIA L40", "L40", 181.05),
        ("NVIDIA B200", "B200", 2250.0),
    ],
)
def test_torch_device_names_map_to_their_datasheet_peak(device_name: str, entry: str, tflops: float) -> None:
    assert gpu_peak(device_name).name == entry
    assert peak_bf16_flops(device_name) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize("device_name", ["NVIDIA A10G", "Tesla V100-SXM2-32GB", "cpu", "NVIDIA GeForce RTX 4090"])
def test_devices_without_a_listed_bf16_peak_fail_with_the_known_list(device_name: str) -> None:
    with pytest.raises(UnknownGpuError, match=f"no bf16 peak known for device '{device_name}'.*H100 SXM"):
        gpu_peak(device_name)


def test_every_peak_names_its_source_and_entries_are_unique() -> None:
    assert len({p.name for p in GPU_PEAKS}) == len(GPU_PEAKS)
    assert all("datasheet" in p.source and p.bf16_dense_tflops > 0 for p in GPU_PEAKS)


def test_mfu_is_achieved_flops_over_peak_times_gpus() -> None:
    # 400 TFLOP in one second on one H100 SXM: 400 / 989.5.
    assert mfu(400e12, 1.0, "NVIDIA H100 80GB HBM3") == pytest.approx(400 / 989.5)
    # The same step split over 4 GPUs in a quarter of the time is the same utilisation.
    assert mfu(400e12, 0.25, "NVIDIA H100 80GB HBM3", num_gpus=4) == pytest.approx(400 / 989.5)
    # Twice the time, half the MFU; an explicit peak overrides the table (and unknown names then work).
    assert mfu(312e12, 2.0, "NVIDIA A100-SXM4-40GB") == pytest.approx(0.5)
    assert mfu(50e12, 1.0, "cpu", peak_flops_per_gpu=100e12) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"step_time_s": 0.0}, "step_time_s must be positive"),
        ({"num_gpus": 0}, "num_gpus must be at least 1"),
        ({"model_flops_per_step": -1.0}, "model_flops_per_step must be non-negative"),
        ({"peak_flops_per_gpu": 0.0}, "peak_flops_per_gpu must be positive"),
    ],
)
def test_mfu_rejects_meaningless_inputs(kwargs: dict, message: str) -> None:
    args = {"model_flops_per_step": 1e12, "step_time_s": 1.0, "device_name": "NVIDIA H200", **kwargs}
    with pytest.raises(ValueError, match=message):
        mfu(**args)
