"""The DeepSpeed op cache is per environment, and a directory the user chose wins."""

import sys
from pathlib import Path

from trainer.strategy.op_cache import EXTENSIONS_ENV, pin_op_cache


def test_op_cache_defaults_to_the_environments_own_directory(monkeypatch) -> None:
    monkeypatch.delenv(EXTENSIONS_ENV, raising=False)
    assert pin_op_cache() == str(Path(sys.prefix) / "torch_extensions")


def test_op_cache_keeps_the_users_directory(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(EXTENSIONS_ENV, str(tmp_path))
    assert pin_op_cache() == str(tmp_path)
