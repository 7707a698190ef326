"""The Ray job's entrypoint: runs a training config on Ray Train's TorchTrainer with N DeepSpeed workers.

Submitted by ray_jobs.submit; runs on the cluster (driver side), never on the submitting machine.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from ray_jobs.failure_report import print_failure
from ray_jobs.job_payload import PAYLOAD_ENV, RESULT_MARKER, decode_payload
from ray_jobs.ray_checkpoint_io import RayCheckpointIO
from trainer.config.schema import ExperimentConfig
from trainer.tracking import timeline

LAUNCH_ID = uuid.uuid4().hex  # this driver process: Ray Train restarts inside it share it, a re-submission does not


def _train_worker(loop_config: dict[str, Any]) -> None:
    cfg = ExperimentConfig.model_validate(loop_config["config"])
    rank_zero = ray.train.get_context().get_world_rank() == 0
    if rank_zero:
        timeline.mark("worker.process", at=timeline.process_start_time(), run=cfg.run.name)
        timeline.mark("worker.train_fn", run=cfg.run.name)
    # Imported here, in the workers only: the job driver (and the submitter, which imports this module's
    # names) never touch DeepSpeed or transformers, which would cost them seconds of start-up.
    from trainer.loop import Trainer

    if rank_zero:
        timeline.mark("worker.start", run=cfg.run.name)
    Trainer(cfg, RayCheckpointIO(), launch_id=loop_config["launch_id"]).fit()


def torch_trainer(
    train_fn: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], cfg: ExperimentConfig, name: str
) -> TorchTrainer:
    """A TorchTrainer with cfg.run's workers, named `name` in cfg.run's storage: a run with the same name and
    storage resumes from its latest checkpoint."""
    storage = cfg.run.storage_path or str(Path(cfg.run.output_dir) / "ray")
    resources = {"CPU": cfg.run.cpus_per_worker, **({"GPU": 1} if cfg.run.use_gpu else {})}
    return TorchTrainer(
        train_fn,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.run.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
        ),
    )


def run_training_job(cfg: ExperimentConfig) -> dict[str, Any]:
    """Fit one config across the cluster; a run with the same name and storage resumes from its latest
    checkpoint. Returns rank 0's final metrics (with the MLflow run id and model URI). Pipelines run their
    stages through ray_jobs.stage_group."""
    loop_config = {"config": cfg.model_dump(mode="json"), "launch_id": f"{LAUNCH_ID}:{cfg.run.name}"}
    trainer = torch_trainer(_train_worker, loop_config, cfg, cfg.run.name)
    timeline.mark("driver.fit", run=cfg.run.name)
    reported = trainer.fit().metrics
    if reported is None:
        raise RuntimeError(f"run {cfg.run.name}: the training workers reported no metrics")
    metrics = dict(reported)
    timeline.mark("driver.fitted", run=cfg.run.name)
    return metrics


def main() -> None:
    timeline.mark("driver.process", at=timeline.process_start_time())
    timeline.mark("driver.start")
    cfg = decode_payload(ExperimentConfig, os.environ[PAYLOAD_ENV])
    try:
        metrics = run_training_job(cfg)
    except BaseException as exc:
        print_failure(exc, cfg.run.name)
        raise
    print(RESULT_MARKER + json.dumps(metrics, default=str), flush=True)


if __name__ == "__main__":
    main()
