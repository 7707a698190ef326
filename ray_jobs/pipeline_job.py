"""The Ray job's entrypoint for a pipeline: stages run in order, each a TorchTrainer run, all under one
MLflow parent run; later stages receive earlier stages' model URIs (KNIFE: the student gets the teacher)."""

from __future__ import annotations

import json
import os
from typing import Any

from mlflow.tracking import MlflowClient

from ray_jobs.job_payload import PAYLOAD_ENV, RESULT_MARKER, decode_payload
from ray_jobs.pipeline import PipelinePlan, PlannedStage
from ray_jobs.train_job import run_training_job
from trainer.tracking import timeline
from trainer.tracking.mlflow_tracker import MLflowTracker, resolve_experiment, resolve_tracking_uri

PIPELINE_TAG = "reasondistill.pipeline"  # on the parent and every stage's run
ROLE_TAG = "reasondistill.role"  # "pipeline" marks the parent run


def find_unfinished_parent(client: MlflowClient, experiment_id: str, name: str) -> str | None:
    """A re-submitted pipeline that did not finish continues its previous parent run."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{PIPELINE_TAG}` = '{name}' and tags.`{ROLE_TAG}` = 'pipeline' and attributes.status != 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def wire_stage(stage: PlannedStage, results: dict[str, dict[str, Any]]) -> tuple[PlannedStage, dict[str, str]]:
    """Fill a stage's references with the referenced stages' logged models; returns tags recording them."""
    config, tags = stage.config, {}
    if stage.teacher:
        teacher = results[stage.teacher]
        knife = config.method.knife.model_copy(update={"teacher": teacher["model_uri"]})
        config = config.model_copy(update={"method": config.method.model_copy(update={"knife": knife})})
        tags = {
            "knife.teacher_stage": stage.teacher,
            "knife.teacher_run_id": str(teacher["mlflow_run_id"]),
            "knife.teacher_model_uri": str(teacher["model_uri"]),
        }
    if stage.tokenizer_from:
        model = config.model.model_copy(update={"tokenizer": results[stage.tokenizer_from]["model_uri"]})
        config = config.model_copy(update={"model": model})
    return stage.model_copy(update={"config": config}), tags


def run_pipeline(plan: PipelinePlan) -> dict[str, dict[str, Any]]:
    tracking = plan.stages[0].config.tracking
    client = MlflowClient(resolve_tracking_uri(tracking))
    experiment = client.get_experiment_by_name(resolve_experiment(tracking))
    resume = find_unfinished_parent(client, experiment.experiment_id, plan.name) if experiment else None
    parent = MLflowTracker(
        tracking, run_name=plan.name, tags={PIPELINE_TAG: plan.name, ROLE_TAG: "pipeline"}, resume_run_id=resume
    )
    parent.log_params({"pipeline.stages": ",".join(s.name for s in plan.stages)})
    results: dict[str, dict[str, Any]] = {}
    try:
        for stage in plan.stages:
            wired, tags = wire_stage(stage, results)
            print(f"[pipeline {plan.name}] stage {stage.name}: method {wired.config.method.name}", flush=True)
            timeline.mark("stage.start", stage=stage.name)
            metrics = run_training_job(
                wired.config,
                parent_run_id=parent.run_id,
                run_tags={PIPELINE_TAG: plan.name, "stage": stage.name, **tags},
            )
            results[stage.name] = metrics
            timeline.mark("stage.end", stage=stage.name)
            parent.log_metrics({f"{stage.name}/dev_accuracy": metrics["dev/accuracy"]}, step=0)
            parent.set_tags({f"stage.{stage.name}.run_id": str(metrics["mlflow_run_id"])})
    except BaseException:
        parent.finish("FAILED")
        raise
    parent.log_dict(results, "pipeline/results.json")
    parent.finish()
    return results


def main() -> None:
    timeline.mark("driver.process", at=timeline.process_start_time())
    timeline.mark("driver.start")
    results = run_pipeline(decode_payload(PipelinePlan, os.environ[PAYLOAD_ENV]))
    print(RESULT_MARKER + json.dumps({"stages": results}, default=str), flush=True)


if __name__ == "__main__":
    main()
