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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainer.config.fields import with_fields
from trainer.config.loader import ConfigError, apply_overrides, read_yaml, validate_tree
from trainer.config.schema import DEFAULT_METHOD, ExperimentConfig
from trainer.methods.registry import StageKind, UnknownMethodError, method_spec, spec_of

PIPELINE_TAG = "reasondistill.pipeline"  # on the parent and every stage's run
ROLE_TAG = "reasondistill.role"  # "pipeline" marks the parent run

# Stage keys every stage may use, whatever its method; a method's own references (KNIFE's `teacher`, KARD's
# `knowledge` and `reranker`) come from trainer.methods.registry.
PIPELINE_REFERENCES: dict[str, StageKind] = {"tokenizer_from": "train", "model_from": "train"}


class StageSpec(BaseModel):
    """One stage as written; keys beyond these are references the stage's method declares (`teacher: teacher`)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: StageKind = Field(
        default="train",
        description="train a model; evaluate an earlier stage's model (model_from); or build a KARD knowledge dataset",
    )
    overrides: dict[str, Any] = Field(default_factory=dict, description="ExperimentConfig tree merged onto base")
    tokenizer_from: str | None = Field(default=None, description="earlier stage whose tokenizer this stage uses")
    model_from: str | None = Field(default=None, description="earlier stage whose model an evaluate stage evaluates")

    @property
    def method_references(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


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
    def _stage_shapes(self) -> PipelineSpec:
        names: set[str] = set()
        for index, stage in enumerate(self.stages):
            if stage.name in names:
                raise ValueError(f"stages[{index}].name: duplicate stage name {stage.name!r}")
            names.add(stage.name)
            if stage.kind == "evaluate" and stage.model_from is None:
                raise ValueError(
                    f"stages[{index}].model_from: an evaluate stage names the stage whose model it evaluates"
                )
            if stage.kind != "evaluate" and stage.model_from is not None:
                raise ValueError(f"stages[{index}].model_from: only evaluate stages take a model from another stage")
            for key, ref in stage.method_references.items():
                if not isinstance(ref, str):
                    raise ValueError(f"stages[{index}].{key}: a stage reference is an earlier stage's name")
        return self


class PlannedStage(BaseModel):
    """A stage with its fully validated config; references stay symbolic until the referenced stage ran."""

    name: str
    config: ExperimentConfig
    kind: StageKind = "train"
    tokenizer_from: str | None = None
    model_from: str | None = None
    references: dict[str, str] = Field(default_factory=dict, description="the method's reference key -> stage")

    def referenced_stages(self) -> dict[str, str]:
        """Every stage this one reads from, by the key naming it."""
        fixed = {key: getattr(self, key) for key in PIPELINE_REFERENCES if getattr(self, key)}
        return {**fixed, **self.references}


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


def _stage_method(spec: PipelineSpec, index: int, base: dict[str, Any]) -> str:
    """The method a stage runs: its own `method.name`, else the base's; a knowledge stage that names none is built
    for the method of the first later stage that reads it (their settings decide what it retrieves)."""
    stage = spec.stages[index]
    own = stage.overrides.get("method", {}).get("name")
    if own is not None or stage.kind != "knowledge":
        return str(own or base.get("method", {}).get("name", DEFAULT_METHOD))
    for later in spec.stages[index + 1 :]:
        if stage.name in later.method_references.values():
            return _stage_method(spec, spec.stages.index(later), base)
    return str(base.get("method", {}).get("name", DEFAULT_METHOD))


def _method_tree(base_method: dict[str, Any], name: str, path: Path | str, stage: str) -> dict[str, Any]:
    """The base's `method` tree as this stage's method accepts it: the base may carry sections for several methods
    (KARD's `kard` and `reranker` beside an I→O baseline); each stage keeps the sections its method declares."""
    try:
        accepted = set(method_spec(name).config.model_fields)
    except UnknownMethodError as exc:
        raise ConfigError(f"{path} (stage {stage!r}): {exc}") from None
    return {key: value for key, value in base_method.items() if key in accepted}


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
    base_method = base.pop("method", {})
    kinds: dict[str, StageKind] = {}
    referenced = {
        ref
        for later in spec.stages
        for ref in [later.tokenizer_from, later.model_from, *later.method_references.values()]
    }
    used_sections: set[str] = {"name"}
    stages = []
    for index, stage in enumerate(spec.stages):
        name = _stage_method(spec, index, {"method": base_method})
        method_tree = _method_tree(base_method, name, path, stage.name)
        used_sections |= set(method_tree)
        tree = _deep_merge({**base, "method": {**method_tree, "name": name}}, stage.overrides)
        tree.setdefault("run", {})["name"] = f"{spec.name}-{stage.name}"
        tree.setdefault("tracking", {}).setdefault("run_name", stage.name)
        config = validate_tree(tree, source=f"{path} (stage {stage.name!r})")
        method = spec_of(config)
        where = f"{path}: stages[{index}] ({stage.name!r})"
        references: dict[str, str] = {}
        for key, kind in [*PIPELINE_REFERENCES.items(), *((r.key, r.stage_kind) for r in method.references)]:
            ref = getattr(stage, key, None) if key in PIPELINE_REFERENCES else stage.method_references.get(key)
            if ref is None:
                continue
            if ref not in kinds:
                raise ConfigError(f"{where}.{key}: {ref!r} is not an earlier stage")
            if kinds[ref] != kind:
                raise ConfigError(f"{where}.{key}: {ref!r} is a {kinds[ref]} stage, not a {kind} stage")
            if key not in PIPELINE_REFERENCES:
                references[key] = ref
        unknown = set(stage.method_references) - set(references)
        if unknown:
            takes = ", ".join(r.key for r in method.references) or "none"
            raise ConfigError(
                f"{where}.{sorted(unknown)[0]}: method {method.name!r} takes no such stage reference "
                f"(it takes: {takes}; any stage: {', '.join(PIPELINE_REFERENCES)})"
            )
        if stage.kind != "knowledge" and stage.name in referenced and not config.tracking.log_model:
            raise ConfigError(
                f"{path}: stage {stage.name!r} is referenced by a later stage, so tracking.log_model "
                "must stay true (later stages load its model from MLflow)"
            )
        kinds[stage.name] = stage.kind
        stages.append(
            PlannedStage(
                name=stage.name,
                config=config,
                kind=stage.kind,
                tokenizer_from=stage.tokenizer_from,
                model_from=stage.model_from,
                references=references,
            )
        )
    unused = set(base_method) - used_sections
    if unused:
        raise ConfigError(
            f"{path}: pipeline.base.method.{sorted(unused)[0]}: no stage's method has this section (each stage keeps "
            "the base's method sections its method declares)"
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
    method = spec_of(config)
    updates = {}
    for key, ref in stage.references.items():
        reference = method.reference(key)
        assert reference is not None, f"stage {stage.name!r}: {key} was checked when the pipeline loaded"
        produced = results[ref]
        updates[f"method.{reference.config_field}"] = produced[reference.output]
        tags.update({tag: str(produced[result]) for tag, result in reference.tags.items()})
        if reference.stage_tag:
            tags[reference.stage_tag] = ref
    if stage.tokenizer_from:
        updates["model.tokenizer"] = results[stage.tokenizer_from]["model_uri"]
    if stage.model_from:
        source = results[stage.model_from]
        updates.update({"model.name": source["model_uri"], "model.tokenizer": None})
        tags.update({"evaluates_stage": stage.model_from, "evaluates_run_id": str(source["mlflow_run_id"])})
    return stage.model_copy(update={"config": with_fields(config, updates)}), tags
