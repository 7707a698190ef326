"""Roles a config field can play beyond its type, declared where the field is defined.

Code that must treat every path or every model reference alike (the submitter pointing relative paths at the
submitting machine, the Kubernetes renderer checking them against the pods' mounts, preflight checking model
sources) walks the config for the role instead of listing fields by hand, so a method's own section is covered
the moment it declares its fields.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel


class FieldRole(Enum):
    LOCAL_PATH = "local_path"  # a file or directory on the machine that runs the job (or a URI, left alone)
    MODEL_SOURCE = "model_source"  # an HF hub name, a local directory or an MLflow model URI


LocalPath = Annotated[str | None, FieldRole.LOCAL_PATH]
ModelSource = Annotated[str | None, FieldRole.MODEL_SOURCE]


def fields_with_role(config: BaseModel, role: FieldRole, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted name, value) of every field under `config` declared with `role`, nested sections included."""
    for name, info in type(config).model_fields.items():
        value = getattr(config, name)
        dotted = f"{prefix}{name}"
        if role in info.metadata:
            yield dotted, value
        elif isinstance(value, BaseModel):
            yield from fields_with_role(value, role, f"{dotted}.")


def with_field(config: BaseModel, dotted: str, value: Any) -> Any:
    """A copy of `config` with the dotted field replaced (sections copied on the way down)."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return config.model_copy(update={head: value})
    return config.model_copy(update={head: with_field(getattr(config, head), rest, value)})


def with_fields(config: BaseModel, updates: dict[str, Any]) -> Any:
    for dotted, value in updates.items():
        config = with_field(config, dotted, value)
    return config
