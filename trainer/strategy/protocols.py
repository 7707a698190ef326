"""What methods, evaluation and the training loop use of the strategy and of a DeepSpeed engine, as Protocols.

Methods and evaluation are typed against these rather than DeepSpeedStrategy, so a test can hand them a small fake;
DeepSpeed ships no types, so TrainingEngine is the only typed view of its engine the code has.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Protocol

import torch


class DistributedContext(Protocol):
    """This rank's place in the process group, and the collectives evaluation shards and gathers with."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def is_rank_zero(self) -> bool: ...

    @property
    def device(self) -> torch.device: ...

    def barrier(self) -> None: ...

    def broadcast_object(self, obj: Any) -> Any: ...

    def all_gather_objects(self, obj: Any) -> list[Any]: ...

    def all_reduce_mean(self, value: float) -> float: ...


class MethodSetupContext(DistributedContext, Protocol):
    """What a method's setup may use besides the process group: placing a frozen model (KNIFE's teacher)."""

    def frozen_config(self, hidden_size: int, zero_stage: int) -> dict[str, Any] | None: ...

    def partitioned_init(self, ds_config: dict[str, Any] | None) -> contextlib.AbstractContextManager[None]: ...

    def prepare_frozen(self, model: torch.nn.Module, ds_config: dict[str, Any] | None) -> torch.nn.Module: ...


class TrainingEngine(Protocol):
    """The parts of a DeepSpeed engine the loop and the strategy call. The engine is also the torch Module whose
    forward the method's loss runs; `module` is the wrapped model (what is evaluated and exported)."""

    @property
    def module(self) -> torch.nn.Module: ...

    def train(self, mode: bool = True) -> Any: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def destroy(self) -> None: ...

    def is_gradient_accumulation_boundary(self) -> bool: ...

    def backward(self, loss: torch.Tensor) -> Any: ...

    def step(self) -> None: ...

    def get_lr(self) -> list[float]: ...

    @property
    def optimizer(self) -> Any: ...

    def get_global_grad_norm(self) -> float | None: ...

    @property
    def basic_optimizer(self) -> torch.optim.Optimizer: ...

    def save_checkpoint(self, save_dir: str | Path, tag: str, client_state: dict[str, Any]) -> Any: ...

    def load_checkpoint(self, load_dir: str | Path, tag: str) -> tuple[str | None, dict[str, Any]]: ...

    def zero_optimization_partition_weights(self) -> bool: ...

    def _zero3_consolidated_16bit_state_dict(self) -> dict[str, torch.Tensor] | None: ...


def as_torch_module(engine: TrainingEngine) -> torch.nn.Module:
    """The engine itself as the torch Module it is (DeepSpeedEngine subclasses Module): what a method's loss runs
    forward, through the engine (precision, ZeRO hooks), where `engine.module` would bypass it."""
    if not isinstance(engine, torch.nn.Module):
        raise TypeError(f"a training engine must be a torch Module; got {type(engine).__name__}")
    return engine


class PretrainedExport(Protocol):
    """A trained model that writes an HF directory: a PreTrainedModel or the late-interaction reranker. torch types
    a Module's other attributes as Tensor | Module, so export names this method through this Protocol."""

    def save_pretrained(
        self, save_directory: str | Path, *, state_dict: dict[str, torch.Tensor] | None = None
    ) -> Any: ...
