"""Training methods by name: what each one is, declared by the method's own package when it is imported.

A method package registers its config section with `@register_method(...)`, which records everything the rest
of the system asks about a method: the implementation (imported only when a run builds the method, so the
submitter, the pipeline planner and `k8s render` never import torch), the pipeline references it takes, the
sequence lengths and frozen models the memory planner sizes, how its runs are labelled, and its headline
metric. Nothing outside the method's package names it.

Built-in methods are the packages `trainer.methods` imports; a method living elsewhere registers by being
imported, and a Ray job imports it on every worker when its module is listed in REASONDISTILL_METHOD_MODULES
(the submitter forwards that variable).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar

from trainer.config.sections import MethodSection

if TYPE_CHECKING:
    from trainer.config.schema import ExperimentConfig
    from trainer.methods.base import Method

METHOD_MODULES_ENV = "REASONDISTILL_METHOD_MODULES"
StageKind = Literal["train", "evaluate", "knowledge"]
SectionT = TypeVar("SectionT", bound=type[MethodSection])
SectionInstanceT = TypeVar("SectionInstanceT", bound=MethodSection)


class UnknownMethodError(ValueError):
    """`method.name` names no registered method."""


@dataclass(frozen=True)
class StageReference:
    """A pipeline stage key naming an earlier stage whose output fills one of this method's config fields,
    e.g. KNIFE's student stage `teacher: teacher` puts the teacher stage's model URI in `method.knife.teacher`."""

    key: str  # the key in the stage's YAML
    stage_kind: StageKind  # the kind of stage it must name
    config_field: str  # dotted field under `method` that receives the output
    description: str
    output: str = "model_uri"  # which of the referenced stage's results fills the field
    tags: Mapping[str, str] = field(default_factory=dict)  # run tag -> result key, recorded on the run
    stage_tag: str | None = None  # run tag recording the referenced stage's name


@dataclass(frozen=True)
class SequenceLengths:
    """Padded encoder (source) and decoder (target) lengths of a method's training features."""

    source: int
    target: int


@dataclass(frozen=True)
class FrozenModel:
    """A model a method loads frozen beside the trained one (KNIFE's teacher), as the memory planner sizes it."""

    source: str | None  # what to size; None: a model shaped like the trained one (not known before it is trained)
    lengths: SequenceLengths
    zero_stage: int


def answer_lengths(cfg: ExperimentConfig) -> SequenceLengths:
    """Input in, answer out: the plain fine-tuning shape."""
    return SequenceLengths(cfg.data.max_input_length, cfg.data.max_target_length)


def no_frozen_model(cfg: ExperimentConfig) -> FrozenModel | None:
    return None


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config: type[MethodSection]
    implementation: str | Callable[[], type[Method]]  # "module:Class", or the class itself
    summary: str
    references: tuple[StageReference, ...] = ()
    sequence_lengths: Callable[[ExperimentConfig], SequenceLengths] = answer_lengths
    frozen_model: Callable[[ExperimentConfig], FrozenModel | None] = no_frozen_model
    headline: Callable[[ExperimentConfig], str] | str = "dev/accuracy"
    label: Callable[[ExperimentConfig], str] | None = None  # a run's `method` tag; default: the name

    def implementation_class(self) -> type[Method]:
        if isinstance(self.implementation, str):
            module, _, attribute = self.implementation.partition(":")
            cls: type[Method] = getattr(importlib.import_module(module), attribute)
            return cls
        return self.implementation()

    def headline_metric(self, cfg: ExperimentConfig) -> str:
        """The metric comparisons rank this method's runs by (logged as the run's `headline_metric` tag)."""
        return self.headline if isinstance(self.headline, str) else self.headline(cfg)

    def run_label(self, cfg: ExperimentConfig) -> str:
        """What a run is called in comparisons (its `method` tag), e.g. a KARD student by its knowledge source."""
        return self.label(cfg) if self.label is not None else self.name

    def reference(self, key: str) -> StageReference | None:
        return next((r for r in self.references if r.key == key), None)


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    *,
    implementation: str | Callable[[], type[Method]],
    summary: str,
    references: tuple[StageReference, ...] = (),
    sequence_lengths: Callable[[ExperimentConfig], SequenceLengths] = answer_lengths,
    frozen_model: Callable[[ExperimentConfig], FrozenModel | None] = no_frozen_model,
    headline: Callable[[ExperimentConfig], str] | str = "dev/accuracy",
    label: Callable[[ExperimentConfig], str] | None = None,
) -> Callable[[SectionT], SectionT]:
    """Class decorator for a method's config section (whose `name` field defaults to the method's name)."""

    def decorate(section: SectionT) -> SectionT:
        name = section.model_fields["name"].default  # type: ignore[call-overload]  # pydantic types it per instance
        if not isinstance(name, str) or not name:
            raise TypeError(f"{section.__name__}: a method section's `name` field needs the method name as default")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.config.__qualname__ != section.__qualname__:
            where = f"{existing.config.__module__}, {section.__module__}"
            raise ValueError(f"method {name!r} is registered twice ({where})")
        _REGISTRY[name] = MethodSpec(
            name, section, implementation, summary, references, sequence_lengths, frozen_model, headline, label
        )
        return section

    return decorate


def _load_method_modules() -> None:
    """Built-in methods (the packages trainer.methods imports) and the modules named in the environment."""
    importlib.import_module("trainer.methods")
    for module in filter(None, (m.strip() for m in os.environ.get(METHOD_MODULES_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UnknownMethodError(f"{METHOD_MODULES_ENV}: cannot import method module {module!r}: {exc}") from exc


def registered_methods() -> dict[str, MethodSpec]:
    """Every method, in registration order (the order comparisons list them in)."""
    _load_method_modules()
    return dict(_REGISTRY)


def method_spec(name: str) -> MethodSpec:
    if name not in _REGISTRY:
        _load_method_modules()
    if name not in _REGISTRY:
        raise UnknownMethodError(f"method.name: {name!r} is not a registered method; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def spec_of(cfg: ExperimentConfig) -> MethodSpec:
    spec = method_spec(cfg.method.name)
    if type(cfg.method) is not spec.config:  # e.g. a model_copy that changed `name` but kept another section
        raise TypeError(
            f"method: a {type(cfg.method).__name__} section does not belong to method.name={spec.name!r}; "
            "build the config through trainer.config.load_config or ExperimentConfig.model_validate"
        )
    return spec


def method_class(cfg: ExperimentConfig) -> type[Method]:
    return spec_of(cfg).implementation_class()


def section_of(cfg: ExperimentConfig, section: type[SectionInstanceT]) -> SectionInstanceT:
    """The run's method section as the method's own type (a method reads its knobs through this)."""
    if not isinstance(cfg.method, section):
        fitting = [name for name, spec in registered_methods().items() if issubclass(spec.config, section)]
        raise TypeError(
            f"method.name={cfg.method.name!r}: this needs the method section of one of {', '.join(fitting)}"
        )
    return cfg.method
