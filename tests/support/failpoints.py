"""Test side of `trainer.failpoints`: arm points for a job, wait until one fires, release a paused one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from trainer.failpoints import FAILPOINTS_ENV


class Failpoints:
    """Points armed through the job's environment; markers live in `directory` (one host: the test machine)."""

    def __init__(self, directory: Path, points: list[dict[str, Any]]) -> None:
        self.directory = directory
        self.points = points
        directory.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        return {FAILPOINTS_ENV: json.dumps({"dir": str(self.directory), "points": self.points})}

    def fired(self, index: int) -> dict[str, Any] | None:
        marker = self.directory / f"{index}.fired"
        try:
            return json.loads(marker.read_text())
        except (OSError, ValueError):
            return None

    def wait_fired(self, index: int, timeout_s: float, alive: Any = None) -> dict[str, Any]:
        """Block until point `index` fired; `alive()` returning False (the job ended) stops the wait early."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.fired(index)
            if info is not None:
                return info
            if alive is not None and not alive():
                raise RuntimeError(f"the job ended before failpoint {self.points[index]} fired")
            time.sleep(0.1)
        raise TimeoutError(f"failpoint {self.points[index]} did not fire within {timeout_s:.0f}s")

    def release(self, index: int) -> None:
        (self.directory / f"{index}.release").touch()
