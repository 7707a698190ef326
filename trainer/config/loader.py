"""YAML + dotted-override loading, with errors that name the file and the field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from trainer.config.schema import ExperimentConfig


class ConfigError(ValueError):
    """A config file or override that cannot become a valid ExperimentConfig."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value`; the value is parsed as YAML so `3`, `true`, `[1,2]` get their types."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from exc
    return key.strip().split("."), value


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set each dotted key in a nested dict, creating sections as needed."""
    for item in overrides:
        path, value = parse_override(item)
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return tree


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, naming the file (and line, where YAML knows it) on failure."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(tree).__name__}")
    return tree


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown key")
        else:
            lines.append(f"  {field}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def validate_tree(tree: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load an ExperimentConfig from an optional YAML file plus `section.key=value` overrides."""
    tree = read_yaml(path) if path is not None else {}
    tree = apply_overrides(tree, overrides)
    return validate_tree(tree, source=str(path) if path is not None else "overrides")


def split_config_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """CLI convention `[CONFIG.yaml] key=value ...`: the first argument is the file unless it has `=`."""
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


def flatten(config: BaseModel) -> dict[str, str]:
    """Dotted-key view of a config, the form MLflow params and the UI's columns want."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), child)
        else:
            flat[prefix] = str(value)

    walk("", config.model_dump(mode="json"))
    return flat


def with_overrides(cfg: ExperimentConfig, *overrides: str) -> ExperimentConfig:
    """`cfg` with dotted overrides applied and validated again, so a changed `method.name` gets its own section
    (a plain `model_copy` would keep the old method's)."""
    return validate_tree(apply_overrides(cfg.model_dump(mode="json"), overrides), source="overrides")
