"""The Ray job's entrypoint for a pipeline: stages run in order, each a TorchTrainer run, all under one
MLflow parent run; later stages receive earlier stages' model URIs (KNIFE: the student gets the teacher)."""

from __future__ import annotations

import json
import os
from typing import Any

from mlflow.tracking import MlflowClient

from ray_jobs.failure_report import print_failure
from ray_jobs.job_payload import PAYLOAD_ENV, RESULT_MARKER, decode_payload
from ray_jobs.pipeline import PipelinePlan, PlannedStage
from ray_jobs.pipeline_resume import finished_stage_result, record_stage_result
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
    """Fill a stage's references with what the referenced stages produced; returns tags recording them."""
    config, tags = stage.config, {}
    method = config.method
    if stage.teacher:
        teacher = results[stage.teacher]
        method = method.model_copy(update={"knife": method.knife.model_copy(update={"teacher": teacher["model_uri"]})})
        tags.update(
            {
                "knife.teacher_stage": stage.teacher,
                "knife.teacher_run_id": str(teacher["mlflow_run_id"]),
                "knife.teacher_model_uri": str(teacher["model_uri"]),
            }
        )
    kard_updates = {}
    if stage.knowledge:
        knowledge = results[stage.knowledge]
        kard_updates["knowledge"] = knowledge["knowledge_path"]
        tags.update({"kard.knowledge_stage": stage.knowledge, "kard.knowledge_key": str(knowledge["knowledge_key"])})
    if stage.reranker:
        reranker = results[stage.reranker]
        kard_updates["reranker"] = reranker["model_uri"]
        tags.update(
            {
                "kard.reranker_run_id": str(reranker["mlflow_run_id"]),
                "kard.reranker_model_uri": str(reranker["model_uri"]),
            }
        )
    if kard_updates:
        method = method.model_copy(update={"kard": method.kard.model_copy(update=kard_updates)})
    model = config.model
    if stage.tokenizer_from:
        model = model.model_copy(update={"tokenizer": results[stage.tokenizer_from]["model_uri"]})
    if stage.model_from:
        source = results[stage.model_from]
        model = model.model_copy(update={"name": source["model_uri"], "tokenizer": None})
        tags.update({"evaluates_stage": stage.model_from, "evaluates_run_id": str(source["mlflow_run_id"])})
    config = config.model_copy(update={"method": method, "model": model})
    return stage.model_copy(update={"config": config}), tags


def run_stage(stage: PlannedStage, parent_run_id: str, tags: dict[str, str]) -> dict[str, Any]:
    if stage.kind == "knowledge":
        from ray_jobs.knowledge_stage import run_knowledge_stage  # Ray Data is imported only where it is used

        return run_knowledge_stage(stage.config, parent_run_id=parent_run_id, run_tags=tags)
    return run_training_job(
        stage.config, parent_run_id=parent_run_id, run_tags=tags, evaluate_only=stage.kind == "evaluate"
    )


def headline_metrics(stage: str, metrics: dict[str, Any]) -> dict[str, float]:
    """A stage's dev metrics on the parent run, e.g. `student/dev_accuracy`, `reranker/dev_reranker_recall_at_1`."""
    return {
        f"{stage}/dev_{key.removeprefix('dev/')}": float(value)
        for key, value in metrics.items()
        if key.startswith("dev/") and isinstance(value, int | float) and not isinstance(value, bool)
    }


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
    stage_name = "setup"
    try:
        for stage in plan.stages:
            stage_name = stage.name
            done = finished_stage_result(client, parent.run_id, stage.name) if resume else None
            if done is not None:
                print(f"[pipeline {plan.name}] stage {stage.name}: finished in an earlier attempt, skipped", flush=True)
                results[stage.name] = done
                continue
            wired, tags = wire_stage(stage, results)
            print(f"[pipeline {plan.name}] stage {stage.name}: {stage.kind} {wired.config.method.name}", flush=True)
            timeline.mark("stage.start", stage=stage.name)
            metrics = run_stage(wired, parent.run_id, {PIPELINE_TAG: plan.name, "stage": stage.name, **tags})
            timeline.mark("stage.end", stage=stage.name)
            results[stage.name] = metrics
            record_stage_result(client, parent.run_id, stage.name, metrics)
            parent.log_metrics(headline_metrics(stage.name, metrics), step=0)
            parent.set_tags({f"stage.{stage.name}.run_id": str(metrics["mlflow_run_id"])})
    except BaseException as exc:
        print_failure(exc, f"{plan.name}/{stage_name}")
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
