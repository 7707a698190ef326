"""Pick the cheapest ZeRO setup that fits: stage, CPU offload and gradient checkpointing for a model on GPUs.

Candidates are tried fastest first: ZeRO-2 (one all-reduce's worth of traffic), ZeRO-3 (~1.5x the traffic),
each again with gradient checkpointing (~1/3 more compute), then CPU offload of the optimizer (its step runs on
the host) and of the parameters. The first whose per-GPU total fits the usable GPU memory, and whose host
memory fits the node, is the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainer.models.architecture import T5Architecture
from trainer.planning.memory import (
    GIB,
    ActivationMemory,
    AttentionKernel,
    ModelStateMemory,
    Precision,
    Workload,
    ZeroSetup,
    activation_memory,
    model_state_memory,
    teacher_output_bytes,
)

# CUDA context, NCCL and cuBLAS workspaces per GPU process; Python, torch and data per process on CPU.
GPU_RUNTIME_BYTES = 2 * GIB
CPU_RUNTIME_BYTES = int(1.5 * GIB)
# Host memory per rank besides ZeRO's own host buffers: the Ray worker, data loader, pinned staging.
HOST_BYTES_PER_RANK = 4 * GIB
# Kept free for the allocator's fragmentation and transient buffers (gradient buckets, logits' gradient).
HEADROOM_FRACTION = 0.10

CANDIDATES_GPU = (
    ZeroSetup(2),
    ZeroSetup(3),
    ZeroSetup(2, gradient_checkpointing=True),
    ZeroSetup(3, gradient_checkpointing=True),
    ZeroSetup(2, offload_optimizer=True, gradient_checkpointing=True),
    ZeroSetup(3, offload_optimizer=True, gradient_checkpointing=True),
    ZeroSetup(3, offload_optimizer=True, offload_param=True, gradient_checkpointing=True),
)
# On CPU the "device" is host memory already: offloading to it gains nothing.
CANDIDATES_CPU = tuple(c for c in CANDIDATES_GPU if not c.offload_optimizer)


@dataclass(frozen=True)
class Hardware:
    gpus_per_node: int
    num_nodes: int
    gpu_memory_gib: float
    node_memory_gib: float
    on_gpu: bool = True

    @property
    def total_gpus(self) -> int:
        return self.gpus_per_node * self.num_nodes

    @property
    def usable_device_bytes(self) -> int:
        return int(self.gpu_memory_gib * GIB * (1 - HEADROOM_FRACTION))

    def describe(self) -> str:
        if not self.on_gpu:
            return f"{self.total_gpus} CPU worker(s), {self.node_memory_gib:g} GiB each"
        return (
            f"{self.num_nodes} node(s) x {self.gpus_per_node} GPU(s) x {self.gpu_memory_gib:g} GiB, "
            f"{self.node_memory_gib:g} GiB host memory per node"
        )


@dataclass(frozen=True)
class Teacher:
    """A frozen KNIFE teacher on every rank: replicated (ZeRO stage 0) or partitioned (stage 3)."""

    arch: T5Architecture
    work: Workload
    zero_stage: int = 3


@dataclass(frozen=True)
class PlanRequest:
    arch: T5Architecture
    hardware: Hardware
    precision: Precision
    work: Workload
    teacher: Teacher | None = None
    required: ZeroSetup = field(default_factory=lambda: ZeroSetup(0))  # flags the user already turned on

    @property
    def kernel(self) -> AttentionKernel:
        return "fused" if self.hardware.on_gpu else "math"


@dataclass(frozen=True)
class Estimate:
    """Per-GPU (or per CPU worker) memory of one setup, and host memory per node."""

    setup: ZeroSetup
    model_states: ModelStateMemory
    activations: ActivationMemory
    teacher_states_bytes: int
    runtime_bytes: int
    usable_bytes: int
    host_bytes_per_node: int
    node_memory_bytes: int

    @property
    def device_bytes(self) -> int:
        return (
            self.model_states.gpu_bytes + self.activations.total_bytes + self.teacher_states_bytes + self.runtime_bytes
        )

    @property
    def fits(self) -> bool:
        return self.device_bytes <= self.usable_bytes and self.host_bytes_per_node <= self.node_memory_bytes


@dataclass(frozen=True)
class Plan:
    request: PlanRequest
    estimates: tuple[Estimate, ...]

    @property
    def chosen(self) -> Estimate | None:
        return next((e for e in self.estimates if e.fits), None)


def _teacher_state_bytes(teacher: Teacher, precision: Precision, hardware: Hardware) -> int:
    elem = 2 if precision == "bf16" else 4
    if teacher.zero_stage == 3:
        return (
            int(elem * teacher.arch.num_parameters / hardware.total_gpus) + elem * teacher.arch.largest_layer_parameters
        )
    return elem * teacher.arch.num_parameters


def estimate(request: PlanRequest, setup: ZeroSetup) -> Estimate:
    hardware = request.hardware
    states = model_state_memory(
        request.arch.num_parameters,
        request.arch.largest_layer_parameters,
        setup,
        request.precision,
        hardware.gpus_per_node,
        hardware.num_nodes,
    )
    activations = activation_memory(
        request.arch, request.work, request.precision, setup.gradient_checkpointing, request.kernel
    )
    teacher_states = 0
    if request.teacher is not None:
        teacher_states = _teacher_state_bytes(request.teacher, request.precision, hardware)
        activations = ActivationMemory(
            activations.encoder_bytes,
            activations.decoder_bytes,
            activations.output_bytes,
            teacher_output_bytes(request.teacher.arch, request.teacher.work, request.precision),
        )
    if hardware.on_gpu:
        runtime, usable = GPU_RUNTIME_BYTES, hardware.usable_device_bytes
        host = states.cpu_bytes + hardware.gpus_per_node * HOST_BYTES_PER_RANK
    else:
        # One rank per CPU worker: its "device" is the worker's own memory, host buffers included.
        runtime, usable = CPU_RUNTIME_BYTES, int(hardware.node_memory_gib * GIB * (1 - HEADROOM_FRACTION))
        host = 0
    return Estimate(
        setup,
        states,
        activations,
        teacher_states,
        runtime,
        usable,
        host,
        int(hardware.node_memory_gib * GIB),
    )


def _with_required(candidate: ZeroSetup, required: ZeroSetup) -> ZeroSetup:
    """A candidate with the user's own choices kept on (parameter offload implies ZeRO-3)."""
    offload_param = candidate.offload_param or required.offload_param
    return ZeroSetup(
        3 if offload_param else max(candidate.zero_stage, required.zero_stage),
        candidate.offload_optimizer or required.offload_optimizer,
        offload_param,
        candidate.gradient_checkpointing or required.gradient_checkpointing,
    )


def make_plan(request: PlanRequest) -> Plan:
    """Every candidate's estimate, fastest first; `plan.chosen` is the first that fits (None: nothing does)."""
    candidates = CANDIDATES_GPU if request.hardware.on_gpu else CANDIDATES_CPU
    seen: list[ZeroSetup] = []
    for candidate in candidates:
        merged = _with_required(candidate, request.required)
        if merged not in seen:
            seen.append(merged)
    return Plan(request, tuple(estimate(request, setup) for setup in seen))
