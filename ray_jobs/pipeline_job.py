"""The Ray job's entrypoint for a pipeline: stages run in order under one MLflow parent run, consecutive
training stages on one shared worker group (ray_jobs/stage_group.py); later stages receive earlier stages' model
URIs (KNIFE: the student gets the teacher)."""

from __future__ import annotations

import json
import os
from typing import Any

from mlflow.tracking import MlflowClient

from ray_jobs.failure_report import print_failure
from ray_jobs.job_payload import PAYLOAD_ENV, RESULT_MARKER, decode_payload
from ray_jobs.pipeline import PIPELINE_TAG, ROLE_TAG, PipelinePlan, PlannedStage, stage_groups
from ray_jobs.pipeline_resume import finished_stage_result, record_stage_result
from ray_jobs.stage_group import run_stage_group
from trainer.tracking import timeline
from trainer.tracking.compare import log_pipeline_comparison
from trainer.tracking.mlflow_tracker import MLflowTracker, resolve_experiment, resolve_tracking_uri


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


def first_unfinished(client: MlflowClient, parent_run_id: str, stages: list[PlannedStage]) -> str | None:
    """The stage a failed worker group was in: the first one it did not record (None if that cannot be read)."""
    try:
        return next((s.name for s in stages if finished_stage_result(client, parent_run_id, s.name) is None), None)
    except Exception:  # the failure report names the group instead; the job's own error is what matters
        return None


def run_knowledge(
    pipeline: str, stage: PlannedStage, client: MlflowClient, parent_run_id: str, results: dict[str, dict[str, Any]]
) -> None:
    """A knowledge stage runs Ray Data from the driver; its result is recorded like a training stage's."""
    from ray_jobs.knowledge_stage import run_knowledge_stage  # Ray Data is imported only where it is used

    print(f"[pipeline {pipeline}] stage {stage.name}: knowledge", flush=True)
    timeline.mark("stage.start", stage=stage.name)
    tags = {PIPELINE_TAG: pipeline, "pipeline": pipeline, "stage": stage.name}
    result = run_knowledge_stage(stage.config, parent_run_id=parent_run_id, run_tags=tags)
    timeline.mark("stage.end", stage=stage.name)
    results[stage.name] = result
    record_stage_result(client, parent_run_id, stage.name, result)


def run_pipeline(plan: PipelinePlan) -> dict[str, dict[str, Any]]:
    tracking = plan.stages[0].config.tracking
    client = MlflowClient(resolve_tracking_uri(tracking))
    experiment = client.get_experiment_by_name(resolve_experiment(tracking))
    resume = find_unfinished_parent(client, experiment.experiment_id, plan.name) if experiment else None
    base = plan.stages[0].config
    identity = {"pipeline": plan.name, "dataset": base.data.dataset, "seed": str(base.run.seed)}
    parent = MLflowTracker(
        tracking,
        run_name=f"{plan.name} · {base.data.dataset} · seed {base.run.seed}",  # seeds of one pipeline apart in the UI
        tags={PIPELINE_TAG: plan.name, ROLE_TAG: "pipeline", **identity},
        resume_run_id=resume,
    )
    parent.log_params({"pipeline.stages": ",".join(s.name for s in plan.stages)})
    results: dict[str, dict[str, Any]] = {}
    stage_name = "setup"
    try:
        for group in stage_groups(plan):
            pending = []
            for stage in group:
                done = finished_stage_result(client, parent.run_id, stage.name) if resume else None
                if done is None:
                    pending.append(stage)
                    continue
                print(f"[pipeline {plan.name}] stage {stage.name}: finished in an earlier attempt, skipped", flush=True)
                results[stage.name] = done
            if not pending:
                continue
            stage_name = pending[0].name if len(pending) == 1 else f"{pending[0].name}..{pending[-1].name}"
            if pending[0].kind == "knowledge":
                run_knowledge(plan.name, pending[0], client, parent.run_id, results)
                continue
            try:
                run_stage_group(plan.name, group, pending, parent.run_id, results)
            except BaseException:
                stage_name = first_unfinished(client, parent.run_id, pending) or stage_name
                raise
            for stage in pending:  # recorded by the group's rank 0
                finished = finished_stage_result(client, parent.run_id, stage.name)
                if finished is None:
                    raise RuntimeError(f"stage {stage.name}: its worker group ended without recording a result")
                results[stage.name] = finished
    except BaseException as exc:
        print_failure(exc, f"{plan.name}/{stage_name}")
        parent.finish("FAILED")
        raise
    parent.log_dict(results, "pipeline/results.json")
    try:
        log_pipeline_comparison(client, parent.run_id)
    except Exception as exc:  # the stages' models are logged; a chart that failed must not fail the pipeline
        print(f"[pipeline {plan.name}] comparison not logged: {type(exc).__name__}: {exc}", flush=True)
        parent.set_tags({"comparison.error": f"{type(exc).__name__}: {exc}"[:5000]})
    parent.finish()
    return results


def main() -> None:
    timeline.mark("driver.process", at=timeline.process_start_time())
    timeline.mark("driver.start")
    results = run_pipeline(decode_payload(PipelinePlan, os.environ[PAYLOAD_ENV]))
    print(RESULT_MARKER + json.dumps({"stages": results}, default=str), flush=True)


if __name__ == "__main__":
    main()
