"""Consecutive pipeline stages run in one Ray Train worker group: one TorchTrainer whose workers run the stages
in order, so a stage's set-up is its data, model and engine, not new worker processes that import torch,
DeepSpeed and transformers again and join a new process group (~17-20 s a stage on 2 cores, measured by
`python -m ray_jobs.benchmarks.perf --parts ray`).

What a worker group per stage gave for free is kept:
- resume: rank 0 records each finished stage on the pipeline's parent run as the driver did (pipeline_resume),
  so a worker-group restart (Ray Train's max_failures) or a re-submitted pipeline skips it;
- checkpoints carry the name of their stage, and a stage resumes only from its own (the group's Ray Train run
  holds every stage's checkpoints);
- each stage is a child MLflow run with the same tags, and `ray.train.report` is called the same number of times
  on every rank (each stage's Trainer reports on all ranks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray.train

from ray_jobs.pipeline import PIPELINE_TAG, PlannedStage, wire_stage
from ray_jobs.ray_checkpoint_io import RayCheckpointIO
from ray_jobs.train_job import LAUNCH_ID, torch_trainer
from trainer.tracking import timeline
from trainer.tracking.mlflow_tracker import resolve_tracking_uri

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

STAGE_FILE = "pipeline_stage"  # in every checkpoint a shared worker group reports: the stage that wrote it
STAGE_METRIC = "pipeline/stage"  # and in its Ray Train metrics


class StageCheckpointIO(RayCheckpointIO):
    """RayCheckpointIO for one stage of a shared worker group: its checkpoints are labelled with the stage, and
    the latest checkpoint counts only if this stage wrote it."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        with super().latest() as directory:
            label = directory / STAGE_FILE if directory is not None else None
            yield directory if label is not None and label.is_file() and label.read_text() == self.stage else None

    def staging_dir(self, step: int) -> Path:
        directory = super().staging_dir(step)
        (directory / STAGE_FILE).write_text(self.stage)
        return directory

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        super().report({**metrics, STAGE_METRIC: self.stage}, checkpoint_dir)


def group_run_name(pipeline: str, group: list[PlannedStage]) -> str:
    """The group's Ray Train run: named by the plan's stages, not by those still to run, so a re-submitted pipeline
    finds the checkpoints of the stage it was killed in."""
    return f"{pipeline}-{group[0].name}" if len(group) == 1 else f"{pipeline}-{group[0].name}-to-{group[-1].name}"


def _stage_group_worker(loop_config: dict[str, Any]) -> None:
    rank_zero = ray.train.get_context().get_world_rank() == 0
    if rank_zero:
        timeline.mark("worker.process", at=timeline.process_start_time())
        timeline.mark("worker.train_fn")
    # trainer.loop is imported here, in the workers only (see ray_jobs.train_job), and MLflow on rank 0 only, the
    # one that writes to it: Ray Train's controller unpickles this function, importing this module.
    from trainer.loop import Trainer
    from trainer.strategy.deepspeed_strategy import broadcast_from_rank_zero

    if rank_zero:
        timeline.mark("worker.start")
    pipeline, parent_run_id = loop_config["pipeline"], loop_config["parent_run_id"]
    results: dict[str, dict[str, Any]] = dict(loop_config["results"])
    stages = [PlannedStage.model_validate(s) for s in loop_config["stages"]]
    # The parent run's store (the driver's, from the first stage's tracking settings); rank 0 writes to it.
    client: MlflowClient | None = None
    if rank_zero:
        from mlflow.tracking import MlflowClient

        from ray_jobs.pipeline_resume import finished_stage_result, record_stage_result

        client = MlflowClient(resolve_tracking_uri(stages[0].config.tracking))
    # Only a restarted worker group (Ray Train runs it from the top; every finished stage reported a checkpoint)
    # can meet a stage an earlier attempt finished: the driver passes only unfinished ones.
    restarted = ray.train.get_checkpoint() is not None
    for stage in stages:
        if restarted:
            recorded = finished_stage_result(client, parent_run_id, stage.name) if client else None
            done = broadcast_from_rank_zero(recorded)
            if done is not None:
                results[stage.name] = done
                continue
        wired, tags = wire_stage(stage, results)
        if rank_zero:
            timeline.mark("stage.start", stage=stage.name)
            print(f"[pipeline {pipeline}] stage {stage.name}: {stage.kind} {wired.config.method.name}", flush=True)
        trainer = Trainer(
            wired.config,
            StageCheckpointIO(stage.name),
            parent_run_id=parent_run_id,
            run_tags={PIPELINE_TAG: pipeline, "pipeline": pipeline, "stage": stage.name, **tags},
            launch_id=f"{loop_config['launch_id']}:{wired.config.run.name}",
        )
        result = trainer.evaluate_model() if stage.kind == "evaluate" else trainer.fit()
        summary = broadcast_from_rank_zero(result.reported())  # rank 0 logged the models: its URIs are the stage's
        if client is not None:
            record_stage_result(client, parent_run_id, stage.name, summary)
            timeline.mark("stage.end", stage=stage.name)
        results[stage.name] = summary
        del result
        trainer.strategy.release()


def run_stage_group(
    pipeline: str,
    group: list[PlannedStage],
    pending: list[PlannedStage],
    parent_run_id: str,
    results: dict[str, dict[str, Any]],
) -> None:
    """Run `pending` (the stages of `group` not finished yet, in order) on one worker group; each finished stage is
    recorded on the parent run, where the driver reads it back."""
    first = pending[0].config
    loop_config = {
        "pipeline": pipeline,
        "parent_run_id": parent_run_id,
        "stages": [stage.model_dump(mode="json") for stage in pending],
        "results": results,
        "launch_id": LAUNCH_ID,
    }
    name = group_run_name(pipeline, group)
    timeline.mark("group.start", run=name)
    torch_trainer(_stage_group_worker, loop_config, first, name).fit()
    timeline.mark("group.end", run=name)
