"""Multi-stage pipelines (KNIFE: teacher, then student and baselines) as one typed YAML.

    pipeline:
      name: knife-synthetic
      base: {model: {name: t5-tiny}, data: {dataset: synthetic}, ...}   # an ExperimentConfig for every stage
      stages:
        - {name: teacher, overrides: {method: {name: knife_teacher}}}
        - {name: student, overrides: {method: {name: knife_student}}, teacher: teacher, tokenizer_from: teacher}

Stage kinds: `train` (default), `evaluate` (the model of `model_from`, evaluated in a run of its own, e.g. a KARD
student under another inference-time knowledge source), and `knowledge` (KARD's retrieval cache, built with Ray
Data; `knowledge: <stage>` hands it to later stages).

Dotted CLI overrides apply to `base`, so `model.name=google/t5-v1_1-base run.num_workers=8` retargets the
whole comparison. References to other stages resolve at run time to those stages' MLflow model URIs.

Consecutive train/evaluate stages that ask for the same workers run in one Ray Train worker group
(`reuse_workers`, default on; ray_jobs/stage_group.py), so a stage starts from its data and model, not from new
processes importing torch, DeepSpeed and transformers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainer.config.loader import ConfigError, apply_overrides, read_yaml, validate_tree
from trainer.config.schema import ExperimentConfig

PIPELINE_TAG = "reasondistill.pipeline"  # on the parent and every stage's run
ROLE_TAG = "reasondistill.role"  # "pipeline" marks the parent run

StageKind = Literal["train", "evaluate", "knowledge"]
# Reference field -> the kind of stage it must name (all point to earlier stages).
REFERENCES: dict[str, StageKind] = {
    "teacher": "train",
    "tokenizer_from": "train",
    "model_from": "train",
    "reranker": "train",
    "knowledge": "knowledge",
}


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: StageKind = Field(
        default="train",
        description="train a model; evaluate an earlier stage's model (model_from); or build a KARD knowledge dataset",
    )
    overrides: dict[str, Any] = Field(default_factory=dict, description="ExperimentConfig tree merged onto base")
    teacher: str | None = Field(default=None, description="earlier stage whose model is method.knife.teacher")
    tokenizer_from: str | None = Field(default=None, description="earlier stage whose tokenizer this stage uses")
    model_from: str | None = Field(default=None, description="earlier stage whose model an evaluate stage evaluates")
    reranker: str | None = Field(default=None, description="earlier stage whose model is method.kard.reranker")
    knowledge: str | None = Field(default=None, description="earlier knowledge stage: method.kard.knowledge")


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base: dict[str, Any] = Field(default_factory=dict)
    stages: list[StageSpec] = Field(min_length=1)
    reuse_workers: bool = Field(
        default=True,
        description="run consecutive stages with the same run.num_workers/use_gpu/cpus_per_worker/storage in one "
        "worker group; false: a new worker group (new processes) per stage",
    )

    @model_validator(mode="after")
    def _references_point_backwards(self) -> PipelineSpec:
        kinds: dict[str, str] = {}
        for index, stage in enumerate(self.stages):
            if stage.name in kinds:
                raise ValueError(f"stages[{index}].name: duplicate stage name {stage.name!r}")
            for field, kind in REFERENCES.items():
                ref = getattr(stage, field)
                if ref is not None and ref not in kinds:
                    raise ValueError(f"stages[{index}].{field}: {ref!r} is not an earlier stage")
                if ref is not None and kinds[ref] != kind:
                    raise ValueError(f"stages[{index}].{field}: {ref!r} is a {kinds[ref]} stage, not a {kind} stage")
            if stage.kind == "evaluate" and stage.model_from is None:
                raise ValueError(
                    f"stages[{index}].model_from: an evaluate stage names the stage whose model it evaluates"
                )
            if stage.kind != "evaluate" and stage.model_from is not None:
                raise ValueError(f"stages[{index}].model_from: only evaluate stages take a model from another stage")
            kinds[stage.name] = stage.kind
        return self


class PlannedStage(BaseModel):
    """A stage with its fully validated config; references stay symbolic until the referenced stage ran."""

    name: str
    config: ExperimentConfig
    kind: StageKind = "train"
    teacher: str | None = None
    tokenizer_from: str | None = None
    model_from: str | None = None
    reranker: str | None = None
    knowledge: str | None = None


class PipelinePlan(BaseModel):
    name: str
    stages: list[PlannedStage]
    reuse_workers: bool = True

    def with_configs(self, transform: Any) -> PipelinePlan:
        """The same plan with `transform(config)` applied to every stage's config."""
        return self.model_copy(
            update={"stages": [s.model_copy(update={"config": transform(s.config)}) for s in self.stages]}
        )


def is_pipeline_file(path: str | Path | None) -> bool:
    return path is not None and "pipeline" in read_yaml(path)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_pipeline(path: str | Path, overrides: Sequence[str] = ()) -> PipelinePlan:
    """Read, validate and expand a pipeline file; every stage's config is checked before anything runs."""
    tree = read_yaml(path)
    try:
        spec = PipelineSpec.model_validate(tree.get("pipeline"))
    except ValidationError as exc:
        details = "; ".join(f"pipeline.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: invalid pipeline: {details}") from None
    extra_keys = set(tree) - {"pipeline"}
    if extra_keys:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {sorted(extra_keys)}; put shared settings in pipeline.base"
        )
    base = apply_overrides(copy.deepcopy(spec.base), overrides)
    stages = []
    for stage in spec.stages:
        tree = _deep_merge(base, stage.overrides)
        tree.setdefault("run", {})["name"] = f"{spec.name}-{stage.name}"
        tree.setdefault("tracking", {}).setdefault("run_name", stage.name)
        config = validate_tree(tree, source=f"{path} (stage {stage.name!r})")
        if stage.teacher and config.method.name != "knife_student":
            raise ConfigError(f"{path}: stage {stage.name!r} names a teacher but its method is {config.method.name!r}")
        referenced = {getattr(later, field) for later in spec.stages for field in REFERENCES if field != "knowledge"}
        if stage.name in referenced and not config.tracking.log_model:
            raise ConfigError(
                f"{path}: stage {stage.name!r} is referenced by a later stage, so tracking.log_model "
                "must stay true (later stages load its model from MLflow)"
            )
        stages.append(
            PlannedStage(
                config=config,
                **stage.model_dump(include={"name", "kind", *REFERENCES}),
            )
        )
    return PipelinePlan(name=spec.name, stages=stages, reuse_workers=spec.reuse_workers)


def worker_group_key(config: ExperimentConfig) -> tuple[Any, ...]:
    """What a worker group is made of and where its Ray Train run lives: stages equal in it can share one."""
    run = config.run
    return (run.num_workers, run.use_gpu, run.cpus_per_worker, run.storage_path or run.output_dir, run.max_failures)


def stage_groups(plan: PipelinePlan) -> list[list[PlannedStage]]:
    """The plan's stages in order, consecutive train/evaluate stages with one worker-group key together
    (each alone when plan.reuse_workers is off); knowledge stages (Ray Data in the driver) always alone."""
    groups: list[list[PlannedStage]] = []
    for stage in plan.stages:
        previous = groups[-1][-1] if groups else None
        if (
            plan.reuse_workers
            and previous is not None
            and "knowledge" not in (stage.kind, previous.kind)
            and worker_group_key(stage.config) == worker_group_key(previous.config)
        ):
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


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
