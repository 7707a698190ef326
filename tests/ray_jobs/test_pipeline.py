from pathlib import Path

import pytest
import yaml

from ray_jobs.pipeline import PIPELINE_TAG, ROLE_TAG, is_pipeline_file, load_pipeline, stage_groups, wire_stage
from ray_jobs.pipeline_job import find_unfinished_parent
from ray_jobs.stage_group import group_run_name
from ray_jobs.submit import build_request
from trainer.config.loader import ConfigError, load_config
from trainer.tracking.mlflow_tracker import MLflowTracker

REPO_ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, pipeline: dict, **extra: object) -> Path:
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump({"pipeline": pipeline, **extra}))
    return path


STAGES = [
    {"name": "teacher", "overrides": {"method": {"name": "knife_teacher"}}},
    {"name": "student", "teacher": "teacher", "overrides": {"method": {"name": "knife_student"}}},
    {"name": "io", "tokenizer_from": "teacher", "overrides": {"method": {"name": "ft_io"}}},
]


def test_stages_inherit_base_and_cli_overrides_retarget_all(tmp_path: Path) -> None:
    path = write(tmp_path, {"name": "p", "base": {"optim": {"max_steps": 9}}, "stages": STAGES})
    plan = load_pipeline(path, ["model.name=google/t5-v1_1-base", "run.num_workers=8"])
    assert [s.name for s in plan.stages] == ["teacher", "student", "io"]
    for stage in plan.stages:
        assert stage.config.model.name == "google/t5-v1_1-base"
        assert (stage.config.run.num_workers, stage.config.optim.max_steps) == (8, 9)
        assert stage.config.run.name == f"p-{stage.name}"  # its output dir, MLflow run and checkpoints
    assert plan.stages[1].config.method.name == "knife_student"


def test_references_resolve_to_the_earlier_stage_models(tmp_path: Path) -> None:
    plan = load_pipeline(write(tmp_path, {"name": "p", "stages": STAGES}))
    results = {"teacher": {"model_uri": "runs:/abc/model", "mlflow_run_id": "abc"}}
    student, tags = wire_stage(plan.stages[1], results)
    assert student.config.method.knife.teacher == "runs:/abc/model"
    assert tags["knife.teacher_run_id"] == "abc" and tags["knife.teacher_model_uri"] == "runs:/abc/model"
    io, _ = wire_stage(plan.stages[2], results)
    assert io.config.model.tokenizer == "runs:/abc/model"


def test_consecutive_stages_with_the_same_workers_share_a_worker_group(tmp_path: Path) -> None:
    stages = [
        {"name": "knowledge", "kind": "knowledge", "overrides": {"method": {"name": "kard"}}},
        {"name": "reranker", "overrides": {"method": {"name": "kard_reranker"}}},
        {"name": "student", "overrides": {"method": {"name": "kard"}}},
        {"name": "bigger", "overrides": {"method": {"name": "ft_io"}, "run": {"num_workers": 4}}},
        {"name": "eval", "kind": "evaluate", "model_from": "bigger", "overrides": {"run": {"num_workers": 4}}},
    ]
    plan = load_pipeline(write(tmp_path, {"name": "p", "stages": stages}))
    groups = [[stage.name for stage in group] for group in stage_groups(plan)]
    assert groups == [["knowledge"], ["reranker", "student"], ["bigger", "eval"]]
    assert [group_run_name("p", group) for group in stage_groups(plan)] == [
        "p-knowledge", "p-reranker-to-student", "p-bigger-to-eval",
    ]  # fmt: skip
    alone = load_pipeline(write(tmp_path, {"name": "p", "stages": stages, "reuse_workers": False}))
    assert [[stage.name for stage in group] for group in stage_groups(alone)] == [[s["name"]] for s in stages]
    assert group_run_name("p", stage_groups(alone)[1]) == alone.stages[1].config.run.name  # as before groups


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"name": "s", "teacher": "t", "overrides": {"method": {"name": "knife_student"}}}], "not an earlier stage"),
        ([STAGES[0], STAGES[0]], "duplicate stage name 'teacher'"),
        ([STAGES[0], {"name": "x", "teacher": "teacher"}], r"\.teacher: method 'ft_io' takes no such stage reference"),
        (
            [
                {"name": "k", "kind": "knowledge"},
                {"name": "x", "teacher": "k", "overrides": {"method": {"name": "knife_student"}}},
            ],
            "'k' is a knowledge stage, not a train stage",
        ),
        ([{"name": "x", "overrides": {"optim": {"lr": "fast"}}}], r"(?s)stage 'x'.*optim\.lr"),
        ([], "stages"),
    ],
)
def test_invalid_pipelines_fail_before_running(tmp_path: Path, stages: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_pipeline(write(tmp_path, {"name": "p", "stages": stages}))


def test_base_method_sections_go_to_the_stages_whose_method_has_them(tmp_path: Path) -> None:
    """A KARD pipeline's base carries `kard`/`reranker` knobs; its I→O baseline stage gets neither, and a knowledge
    stage naming no method is built for the method of the first stage that reads it."""
    base = {"method": {"kard": {"candidates": 7}, "reranker": {"eval_k": [1, 3]}}}
    stages = [
        {"name": "knowledge", "kind": "knowledge"},
        {"name": "ft", "overrides": {"method": {"name": "ft_io"}}},
        {"name": "kard", "knowledge": "knowledge", "overrides": {"method": {"name": "kard"}}},
    ]
    plan = load_pipeline(write(tmp_path, {"name": "p", "base": base, "stages": stages}))
    knowledge, ft, kard = (stage.config.method for stage in plan.stages)
    assert knowledge.name == "kard" and knowledge.kard.candidates == 7
    assert ft.model_dump() == {"name": "ft_io"}
    assert kard.kard.candidates == 7 and kard.reranker.eval_k == [1, 3]
    assert plan.stages[2].references == {"knowledge": "knowledge"}
    typo = {"method": {"kard": {"candidates": 7}, "knif": {"lambda_in": 1}}}
    with pytest.raises(ConfigError, match=r"pipeline\.base\.method\.knif: no stage's method has this section"):
        load_pipeline(write(tmp_path, {"name": "p", "base": typo, "stages": stages}))


def test_referenced_stage_must_log_its_model(tmp_path: Path) -> None:
    stages = [
        {**STAGES[0], "overrides": {"method": {"name": "knife_teacher"}, "tracking": {"log_model": False}}},
        STAGES[1],
    ]
    with pytest.raises(ConfigError, match="log_model"):
        load_pipeline(write(tmp_path, {"name": "p", "stages": stages}))


def test_unknown_top_level_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown top-level key"):
        load_pipeline(write(tmp_path, {"name": "p", "stages": STAGES}, optim={"lr": 1}))


def test_shipped_configs_validate() -> None:
    for path in (REPO_ROOT / "ray_jobs/configs").glob("*.yaml"):
        request = build_request([str(path)])
        assert request.entrypoint_module == (
            "ray_jobs.pipeline_job" if is_pipeline_file(path) else "ray_jobs.train_job"
        )
        assert request.sizing.tracking.tracking_uri.startswith("sqlite:///")
        assert Path(request.sizing.run.output_dir).is_absolute()


def test_a_resubmitted_pipeline_finds_its_unfinished_parent_not_a_failed_stage(tmp_path: Path) -> None:
    tracking = load_config(overrides=[f"tracking.tracking_uri=sqlite:///{tmp_path / 'm.db'}"]).tracking
    parent = MLflowTracker(tracking, "p", tags={PIPELINE_TAG: "p", ROLE_TAG: "pipeline"})
    parent.finish("FAILED")
    child = MLflowTracker(tracking, "student", parent_run_id=parent.run_id, tags={PIPELINE_TAG: "p", "stage": "s"})
    child.finish("FAILED")
    assert find_unfinished_parent(parent.client, parent.experiment_id, "p") == parent.run_id
    MLflowTracker(tracking, "p", resume_run_id=parent.run_id).finish()
    assert find_unfinished_parent(parent.client, parent.experiment_id, "p") is None
