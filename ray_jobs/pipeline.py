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
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainer.config.loader import ConfigError, apply_overrides, read_yaml, validate_tree
from trainer.config.schema import ExperimentConfig

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
                **stage.model_dump(include={"name", "kind", *REFERENCES}),  # type: ignore[arg-type]
            )
        )
    return PipelinePlan(name=spec.name, stages=stages)
