"""Model FLOPs utilisation: achieved model FLOP/s over the GPU's dense bf16 tensor-core peak.

Peaks are the vendors' datasheet figures for dense bf16 with fp32 accumulation. Datasheets print the
2:4-sparsity figure, marked with an asterisk; the dense peak is half of it. Achievable matmul rates are lower
(one H200 here ran an 8192³ bf16 product at about 790 TFLOP/s against 989.5), which is why a benchmark also
reports the matmul ceiling it measured beside the MFU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuPeak:
    name: str
    pattern: str  # matched against torch.cuda.get_device_name(), case-insensitive
    bf16_dense_tflops: float
    source: str


# Most specific first: "H100 NVL" and "H100 PCIe" before the plain "H100" (the SXM part, which torch names e.g.
# "NVIDIA H100 80GB HBM3"); "L40S" before "L40" before "L4"; "A10" must not match "A100" or "A10G".
GPU_PEAKS: tuple[GpuPeak, ...] = (
    # NVIDIA H100 Tensor Core GPU datasheet: BF16 1,513 TFLOPS (PCIe) / 1,671 (NVL) / 1,979 (SXM), with sparsity.
    GpuPeak("H100 NVL", r"\bH100 NVL\b", 835.5, "NVIDIA H100 datasheet: 1,671 TFLOPS bf16 with sparsity"),
    GpuPeak("H100 PCIe", r"\bH100 PCIe\b", 756.5, "NVIDIA H100 datasheet: 1,513 TFLOPS bf16 with sparsity"),
    GpuPeak("H100 SXM", r"\bH100\b", 989.5, "NVIDIA H100 datasheet: 1,979 TFLOPS bf16 with sparsity"),
    # NVIDIA H200 Tensor Core GPU datasheet: BF16 1,979 TFLOPS (SXM) / 1,671 (NVL), with sparsity.
    GpuPeak("H200 NVL", r"\bH200 NVL\b", 835.5, "NVIDIA H200 datasheet: 1,671 TFLOPS bf16 with sparsity"),
    GpuPeak("H200 SXM", r"\bH200\b", 989.5, "NVIDIA H200 datasheet: 1,979 TFLOPS bf16 with sparsity"),
    # NVIDIA GH200 Grace Hopper Superchip datasheet: FP16/BF16 1,979 TFLOPS with sparsity.
    GpuPeak("GH200", r"\bGH200\b", 989.5, "NVIDIA GH200 datasheet: 1,979 TFLOPS bf16 with sparsity"),
    # NVIDIA HGX/DGX B200 datasheet: 4.5 PFLOPS FP16/BF16 per GPU with sparsity.
    GpuPeak("B200", r"\bB200\b", 2250.0, "NVIDIA DGX B200 datasheet: 4.5 PFLOPS bf16 per GPU with sparsity"),
    # NVIDIA A100 Tensor Core GPU datasheet: BF16 312 TFLOPS dense (624 with sparsity), SXM and PCIe alike.
    GpuPeak("A100", r"\bA100\b", 312.0, "NVIDIA A100 datasheet: 312 TFLOPS bf16 dense"),
    # NVIDIA A30 datasheet: BF16 165 TFLOPS dense (330 with sparsity).
    GpuPeak("A30", r"\bA30\b", 165.0, "NVIDIA A30 datasheet: 165 TFLOPS bf16 dense"),
    # NVIDIA A10 datasheet: BF16 125 TFLOPS dense (250 with sparsity). AWS's A10G is a different part.
    GpuPeak("A10", r"\bA10\b", 125.0, "NVIDIA A10 datasheet: 125 TFLOPS bf16 dense"),
    # NVIDIA L40S datasheet: BF16 362.05 TFLOPS dense (733 with sparsity).
    GpuPeak("L40S", r"\bL40S\b", 362.05, "NVIDIA L40S datasheet: 362.05 TFLOPS bf16 dense"),
    # NVIDIA L40 datasheet: BF16 181.05 TFLOPS dense (362.1 with sparsity).
    GpuPeak("L40", r"\bL40\b", 181.05, "NVIDIA L40 datasheet: 181.05 TFLOPS bf16 dense"),
    # NVIDIA L4 datasheet: BF16 242 TFLOPS with sparsity.
    GpuPeak("L4", r"\bL4\b", 121.0, "NVIDIA L4 datasheet: 242 TFLOPS bf16 with sparsity"),
)


class UnknownGpuError(LookupError):
    """A device with no bf16 peak in GPU_PEAKS (pass the peak explicitly instead)."""


def gpu_peak(device_name: str) -> GpuPeak:
    """The table entry for a torch device name such as 'NVIDIA H100 80GB HBM3'."""
    for peak in GPU_PEAKS:
        if re.search(peak.pattern, device_name, flags=re.IGNORECASE):
            return peak
    known = ", ".join(p.name for p in GPU_PEAKS)
    raise UnknownGpuError(f"no bf16 peak known for device {device_name!r} (known: {known})")


def peak_bf16_flops(device_name: str) -> float:
    """Dense bf16 peak of one GPU in FLOP/s."""
    return gpu_peak(device_name).bf16_dense_tflops * 1e12


def mfu(
    model_flops_per_step: float,
    step_time_s: float,
    device_name: str,
    num_gpus: int = 1,
    peak_flops_per_gpu: float | None = None,
) -> float:
    """Fraction of `num_gpus` GPUs' bf16 peak that a step of `model_flops_per_step` in `step_time_s` achieves.

    `peak_flops_per_gpu` (FLOP/s) overrides the table for devices it does not list.
    """
    if model_flops_per_step < 0:
        raise ValueError(f"model_flops_per_step must be non-negative, got {model_flops_per_step}")
    if step_time_s <= 0:
        raise ValueError(f"step_time_s must be positive, got {step_time_s}")
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be at least 1, got {num_gpus}")
    peak = peak_flops_per_gpu if peak_flops_per_gpu is not None else peak_bf16_flops(device_name)
    if peak <= 0:
        raise ValueError(f"peak_flops_per_gpu must be positive, got {peak}")
    return model_flops_per_step / step_time_s / (peak * num_gpus)
