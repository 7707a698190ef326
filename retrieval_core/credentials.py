"""Secrets from the environment or from mounted files, for the backends' and the service's credentials."""

from __future__ import annotations

import os
from pathlib import Path


def read_secret(value_env: str, file_env: str) -> str | None:
    """Secrets come from ``X`` or from the file named by ``X_FILE`` (Kubernetes/Docker secret mounts)."""
    path = os.environ.get(file_env)
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ValueError(f"{file_env}={path}: cannot read secret file ({exc.strerror})") from None
    value = os.environ.get(value_env)
    return value or None
