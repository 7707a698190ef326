"""Malformed configs of every kind give a ConfigError naming file/line or field, and write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.config.loader import ConfigError, load_config

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
FIELDS = [
    "optim.max_steps",
    "optim.lr",
    "run.num_workers",
    "ds.zero_stage",
    "method.name",
    "data.train_fraction",
    "tracking.tags",
    "optim.betas",
    "run.seed",
    "model.name",
    "ds.precision",
]
VALUES = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True).map(str),
    st.sampled_from(["[", "{a: 1", "[1, [2]]", "null", "true", "''", "!!binary AA==", "&a [*a]", "- x", "~"]),
    st.text(max_size=20).filter(lambda t: "\n" not in t),
)


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  name: t5-tiny\noptim:\n  max_steps: [3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:5: invalid YAML"):
        load_config(config)


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes(b"model:\n  name: t5-tiny\ntracking:\n  tags: {team: caf\xe9}\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml:4: not UTF-8 text"):
        load_config(config)


@FUZZ
@given(field=st.sampled_from(FIELDS), value=VALUES)
def test_any_override_loads_or_names_its_field(field: str, value: str) -> None:
    try:
        load_config(overrides=[f"{field}={value}"])
    except ConfigError as exc:
        assert field in str(exc) or "override" in str(exc), str(exc)


@FUZZ
@given(text=st.text(max_size=300))
def test_any_yaml_text_loads_or_fails_cleanly(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    folder = tmp_path_factory.mktemp("yaml")
    path = folder / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
    assert [p.name for p in folder.iterdir()] == ["c.yaml"]  # nothing written beside it
