"""The DeepSpeed op cache is per environment, and a directory the user chose wins."""

import sys
from pathlib import Path

from trainer.strategy.op_cache import EXTENSIONS_ENV, environment_op_dir, pin_op_cache


def test_op_cache_defaults_to_the_environments_own_directory(monkeypatch) -> None:
    monkeypatch.delenv(EXTENSIONS_ENV, raising=False)
    assert pin_op_cache() == str(environment_op_dir(Path(sys.prefix)))


def test_op_cache_keeps_the_users_directory(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(EXTENSIONS_ENV, str(tmp_path))
    assert pin_op_cache() == str(tmp_path)


def test_an_environment_reached_through_a_symlink_gets_a_directory_of_its_own(tmp_path) -> None:
    """Ops compiled through the link hold the link's paths: sharing the real path's directory would make the
    two rebuild each other's ops."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (tmp_path / "link").symlink_to(venv)
    real, linked = environment_op_dir(venv), environment_op_dir(tmp_path / "link")
    assert real == venv / "torch_extensions"
    assert linked.parent == tmp_path / "link" and linked.name.startswith("torch_extensions-") and linked != real
    assert environment_op_dir(tmp_path / "link") == linked  # stable: one build per path
