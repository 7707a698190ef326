"""The one object that talks to DeepSpeed: process group, engines, step, checkpoints, export."""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import random
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.distributed as dist

from trainer.config.schema import ExperimentConfig
from trainer.strategy.ds_config import (
    ResolveContext,
    load_template,
    resolve_inference_config,
    resolve_training_config,
    size_buckets,
)
from trainer.strategy.op_cache import pin_op_cache
from trainer.strategy.param_groups import weight_decay_groups
from trainer.strategy.protocols import PretrainedExport, TrainingEngine

if TYPE_CHECKING:  # DeepSpeed (~1-3 s, with the parts of transformers it loads) is imported when the strategy first
    # needs it, so importing the training loop costs little more than torch and transformers
    from transformers import PreTrainedTokenizerBase

CLIENT_STATE_KEY = "reasondistill"
PARAM_GROUPS_PREFIX = "param_groups.rank"  # one JSON per rank beside its DeepSpeed shard: the optimizer's groups
MUON_MODULE = "deepspeed.runtime.zero.muon.muon_optimizer"
DYNAMO_DISABLE_ENV = "TORCHDYNAMO_DISABLE"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def broadcast_from_rank_zero(obj: Any) -> Any:
    """Rank 0's value on every rank of the current process group (other ranks' `obj` is never sent)."""
    holder = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def check_accelerator(on_gpu: bool, accelerator: str) -> None:
    """DeepSpeed picks its accelerator once, at import (DS_ACCELERATOR, else CUDA when it sees a GPU); a
    mismatch with run.use_gpu would put the engine and our batches on different devices."""
    expected = "cuda" if on_gpu else "cpu"
    if accelerator == expected:
        return
    if on_gpu:
        raise RuntimeError(
            f"run.use_gpu=true but DeepSpeed's accelerator is {accelerator!r} "
            f"(DS_ACCELERATOR={os.environ.get('DS_ACCELERATOR', '<unset>')}); unset DS_ACCELERATOR or set it to cuda"
        )
    raise RuntimeError(
        f"run.use_gpu=false but DeepSpeed picked the {accelerator!r} accelerator (it auto-detects a GPU); "
        "set DS_ACCELERATOR=cpu for a CPU run on a GPU machine"
    )


def import_muon_uncompiled(optimizer_type: str | None) -> None:
    """DeepSpeed imports its Muon optimizer in every ZeRO-1/2 set-up and step, whatever the optimizer, for isinstance
    checks; that import wraps Muon's kernels in torch.compile, which loads inductor: 1.4-1.8 s of every training
    process's start-up. torch.compile reads TORCHDYNAMO_DISABLE when it wraps a function, so importing the module
    first with it set leaves those kernels plain (unused) functions. A config that trains with Muon keeps them
    compiled."""
    if MUON_MODULE in sys.modules or (optimizer_type or "").lower() == "muon":
        return
    previous = os.environ.get(DYNAMO_DISABLE_ENV)
    os.environ[DYNAMO_DISABLE_ENV] = "1"
    try:
        importlib.import_module(MUON_MODULE)
    finally:
        if previous is None:
            del os.environ[DYNAMO_DISABLE_ENV]
        else:
            os.environ[DYNAMO_DISABLE_ENV] = previous


def cuda_device_index(local_rank: int, device_count: int) -> int:
    """The GPU of a rank started by torchrun/deepspeed (one process per visible GPU, in LOCAL_RANK order)."""
    if not 0 <= local_rank < device_count:
        raise RuntimeError(
            f"LOCAL_RANK={local_rank} but this process sees {device_count} CUDA device(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
            "start at most one rank per GPU"
        )
    return local_rank


class DeepSpeedStrategy:
    """Owns every DeepSpeed call so the training loop and methods stay framework-agnostic.

    Works under Ray Train (process group already created), the deepspeed/torchrun launchers
    (env:// rendezvous), or a single plain process (a one-rank gloo group is created).
    """

    def __init__(self, cfg: ExperimentConfig) -> None:
        if cfg.run.use_gpu and not torch.cuda.is_available():
            raise RuntimeError(
                f"run.use_gpu=true but torch {torch.__version__} sees no CUDA device (built for CUDA "
                f"{torch.version.cuda}); install a CUDA torch (scripts/install_gpu.py) or set run.use_gpu=false"
            )
        pin_op_cache()  # before DeepSpeed compiles or loads an op: the process group's first one is shm_comm
        self.cfg = cfg
        self.on_gpu = cfg.run.use_gpu
        self.resolved_config: dict[str, Any] | None = None
        self.auxiliary_names: tuple[str, ...] = ()
        self._replicated_grad_norm: float | None = None  # the last step's, where DeepSpeed keeps none (stage 0 fp32)
        self.param_group_sizes: list[int] = []  # tensors per optimizer group of the engine `prepare` built

    def release(self) -> None:
        """Leave the process as a next run in it expects (a pipeline's shared worker group runs stage after
        stage): ZeRO-3's zero.Init swaps torch's F.linear for its own wrapper "until manually reset" (its words), and
        engines sit in reference cycles that hold parameters and optimizer state until a collection."""
        from deepspeed.runtime.zero.partition_parameters import InsertPostInitMethodToModuleSubClasses

        original_linear = getattr(InsertPostInitMethodToModuleSubClasses, "linear_bk", None)
        if original_linear is not None:
            torch.nn.functional.linear = original_linear
        gc.collect()
        if self.on_gpu:
            torch.cuda.empty_cache()

    # ---- process group -------------------------------------------------------------------------
    def setup_distributed(self) -> None:
        """Join (Ray Train) or create (torchrun, a plain process) the process group, on this rank's GPU.

        The GPU is chosen before the group exists, so NCCL binds each rank to its own device. Ray Train creates
        the group itself and has already made its worker's GPU current (ray.train.torch.get_device()); that
        choice is kept, since Ray may share several GPUs among a node's workers in an order of its own.
        """
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        check_accelerator(self.on_gpu, get_accelerator().device_name())
        if self.on_gpu and not dist.is_initialized():
            torch.cuda.set_device(cuda_device_index(int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()))
        if not dist.is_initialized() and "RANK" not in os.environ:
            os.environ.update(
                {
                    "RANK": "0",
                    "LOCAL_RANK": "0",
                    "WORLD_SIZE": "1",
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(_free_port()),
                }
            )
        deepspeed.init_distributed(dist_backend="nccl" if self.on_gpu else "gloo")
        self.seed_everything(self.cfg.run.seed)

    @property
    def rank(self) -> int:
        return dist.get_rank()

    @property
    def world_size(self) -> int:
        return dist.get_world_size()

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.on_gpu else torch.device("cpu")

    def seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's value everywhere (e.g. an MLflow run id or a tokenizer built once)."""
        return broadcast_from_rank_zero(obj)

    def all_gather_objects(self, obj: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def all_reduce_mean(self, value: float) -> float:
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.item() / self.world_size

    # ---- engines -------------------------------------------------------------------------------
    def _context(self, hidden_size: int) -> ResolveContext:
        return ResolveContext(world_size=self.world_size, hidden_size=hidden_size, on_gpu=self.on_gpu)

    def configure(self, hidden_size: int) -> dict[str, Any]:
        """Resolve the training template; done before the model exists so ZeRO-3 can partition at build.
        The bucket sizes stay "auto" (DeepSpeed's defaults, should anything read them) until `prepare`."""
        template, _ = load_template(self.cfg.ds.template)
        self.resolved_config = resolve_training_config(
            template, self.cfg.ds, self.cfg.optim, self._context(hidden_size)
        )
        return self.resolved_config

    @property
    def training_config(self) -> dict[str, Any]:
        """The resolved training config (bucket sizes too once `prepare` ran), for code that runs after `configure`."""
        if self.resolved_config is None:
            raise RuntimeError("DeepSpeedStrategy.configure() must run before the training config is read")
        return self.resolved_config

    def frozen_config(self, hidden_size: int, zero_stage: int) -> dict[str, Any] | None:
        """ZeRO-3 inference config for a frozen model (KNIFE's teacher), or None to replicate it (stage 0)."""
        if zero_stage == 0:
            return None
        template, _ = load_template("zero3_inference")
        return resolve_inference_config(
            template, self.cfg.ds, self.cfg.optim.micro_batch_size, self._context(hidden_size)
        )

    @contextlib.contextmanager
    def partitioned_init(self, ds_config: dict[str, Any] | None) -> Iterator[None]:
        """Under ZeRO-3, models built in this block are partitioned as they are created (zero.Init through
        transformers' HfDeepSpeedConfig), so no rank ever materialises a whole T5-3B."""
        if ds_config is None or ds_config.get("zero_optimization", {}).get("stage") != 3:
            yield
            return
        from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

        hf_deepspeed_config = HfDeepSpeedConfig(ds_config)  # transformers holds only a weak reference
        try:
            yield
        finally:
            del hf_deepspeed_config
            unset_hf_deepspeed_config()

    def prepare(self, model: torch.nn.Module, auxiliary: Mapping[str, torch.nn.Module] | None = None) -> TrainingEngine:
        """Wrap a model for training with the resolved template (optimizer and schedule included).

        `auxiliary` modules (KNIFE's student→teacher projection) become submodules of the model under their names,
        so the same engine and optimizer train them (partitioned like the rest under ZeRO-3) and checkpoints carry
        them; export_model leaves them out of the HF directory. The optimizer gets two parameter groups, the
        auxiliary modules' parameters included (trainer.strategy.param_groups): biases and norm weights without
        weight decay unless optim.decay_norm_and_bias.
        """
        if self.resolved_config is None:
            raise RuntimeError("DeepSpeedStrategy.configure() must run before prepare()")
        for name, module in (auxiliary or {}).items():
            if hasattr(model, name):
                raise ValueError(f"auxiliary module name {name!r} clashes with an attribute of the model")
            model.add_module(name, module)
        self.auxiliary_names = tuple(auxiliary or ())
        # Counted after the auxiliary modules joined: their gradients travel in the same buckets.
        trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
        self.resolved_config = size_buckets(self.resolved_config, trainable)
        import deepspeed

        import_muon_uncompiled(self.resolved_config.get("optimizer", {}).get("type"))
        groups = weight_decay_groups(model, self.cfg.optim.decay_norm_and_bias)
        self.param_group_sizes = [len(group["params"]) for group in groups]
        engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, config=self.resolved_config)
        return engine

    def prepare_frozen(self, model: torch.nn.Module, ds_config: dict[str, Any] | None) -> torch.nn.Module:
        """A frozen model: a ZeRO-3 inference engine partitions it across ranks; None replicates it."""
        model.requires_grad_(False)
        model.eval()
        if ds_config is None:
            dtype = torch.bfloat16 if self.cfg.ds.precision == "bf16" else torch.float32
            return model.to(device=self.device, dtype=dtype)
        import deepspeed

        import_muon_uncompiled(None)
        engine, *_ = deepspeed.initialize(model=model, config=ds_config)
        engine.eval()
        return engine.module

    def backward_step(self, engine: TrainingEngine, loss: torch.Tensor) -> bool:
        """Backward and (on an accumulation boundary) optimizer + LR step; True when a step happened."""
        boundary = engine.is_gradient_accumulation_boundary()
        engine.backward(loss)
        if boundary and not hasattr(engine.optimizer, "_global_grad_norm"):
            # Without ZeRO or bf16, DeepSpeed steps torch's optimizer directly and keeps no norm; its backward
            # has just all-reduced the replicated gradients, which the step then clears.
            grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
            self._replicated_grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        engine.step()
        return boundary

    def grad_norm(self, engine: TrainingEngine) -> float | None:
        """The L2 norm of the gradient the last optimizer step applied, before clipping: the whole model's gradient
        averaged over the accumulated micro-batches and all ranks, the same value on every rank. ZeRO-1/2/3 and
        DeepSpeed's bf16 optimizer all-reduce it over their partitions (engine.get_global_grad_norm); inf after an
        overflow step; None when the template turned it off (zero_optimization.compute_grad_norm=false)."""
        if not hasattr(engine.optimizer, "_global_grad_norm"):
            return self._replicated_grad_norm
        norm = engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def current_lr(self, engine: TrainingEngine) -> float:
        return float(engine.get_lr()[0])

    def optimizer_name(self, engine: TrainingEngine) -> str:
        """The optimizer DeepSpeed built from the template: FusedAdam, DeepSpeedCPUAdam (offload) or torch's
        AdamW, depending on the device and offload; benchmarks record which one ran."""
        return type(engine.basic_optimizer).__name__

    def generation_kwargs(self, model: torch.nn.Module) -> dict[str, Any]:
        """ZeRO-3 shards weights: every rank must join every forward, so generation stays in lock-step."""
        partitioned = any(hasattr(p, "ds_id") for p in model.parameters())
        return {"synced_gpus": self.world_size > 1 and partitioned}

    # ---- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, engine: TrainingEngine, directory: Path, client_state: dict[str, Any]) -> None:
        """Every rank writes its own shard (model, optimizer, scheduler, our client state) into directory, and the
        optimizer's group layout, which load_checkpoint checks before DeepSpeed reads the shard."""
        engine.save_checkpoint(str(directory), tag="checkpoint", client_state={CLIENT_STATE_KEY: client_state})
        layout = {"decay_norm_and_bias": self.cfg.optim.decay_norm_and_bias, "group_sizes": self.param_group_sizes}
        (directory / f"{PARAM_GROUPS_PREFIX}{self.rank}.json").write_text(json.dumps(layout))

    def check_param_groups(self, directory: Path) -> None:
        """Refuse a checkpoint whose optimizer groups differ from this run's, naming the setting to change; DeepSpeed
        itself fails on it with an unrelated message (ZeRO-1/2: a parameter-alignment mismatch). A checkpoint
        without the layout file predates the groups: one group of every trainable parameter, in model order."""
        saved = min(directory.glob(f"{PARAM_GROUPS_PREFIX}*.json"), default=None)  # every rank wrote the same
        if saved is None:
            if len(self.param_group_sizes) > 1:
                raise ValueError(
                    f"checkpoint {directory} has one optimizer parameter group (saved before biases and norm "
                    "weights had their own); resume it with optim.decay_norm_and_bias=true"
                )
            return
        layout = json.loads(saved.read_text())
        if layout["group_sizes"] != self.param_group_sizes:
            raise ValueError(
                f"checkpoint {directory} has optimizer parameter groups of {layout['group_sizes']} tensors "
                f"(optim.decay_norm_and_bias={str(layout['decay_norm_and_bias']).lower()}), this run builds "
                f"{self.param_group_sizes} (optim.decay_norm_and_bias="
                f"{str(self.cfg.optim.decay_norm_and_bias).lower()}); resume with the setting it was saved with"
            )

    def load_checkpoint(self, engine: TrainingEngine, directory: Path) -> dict[str, Any]:
        """Restore every rank's shard; returns the client state saved with it."""
        self.check_param_groups(directory)
        load_path, client_state = engine.load_checkpoint(str(directory), tag="checkpoint")
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}")
        return client_state[CLIENT_STATE_KEY]

    # ---- export --------------------------------------------------------------------------------
    def export_model(self, engine: TrainingEngine, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
        """Write a consolidated HF model dir (from_pretrained loads it) on rank 0; collective under ZeRO-3."""
        if engine.zero_optimization_partition_weights():
            state_dict = engine._zero3_consolidated_16bit_state_dict()
        elif self.is_rank_zero:
            state_dict = {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}
        else:
            state_dict = None
        if state_dict is not None:
            auxiliary = tuple(f"{name}." for name in self.auxiliary_names)
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(auxiliary)}
        if self.is_rank_zero:
            directory.mkdir(parents=True, exist_ok=True)
            cast(PretrainedExport, engine.module).save_pretrained(directory, state_dict=state_dict)
            tokenizer.save_pretrained(directory)
            (directory / "ds_config.json").write_text(json.dumps(self.resolved_config, indent=2))
        self.barrier()
