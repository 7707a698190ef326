"""Named fault-injection points, inert unless `REASONDISTILL_FAILPOINTS` arms them (the reliability tests do).

The variable holds JSON: `{"dir": "/tmp/fp", "points": [{"name": "train.step", "when": {"step": 3, "rank": 1},
"action": "pause"}]}`. A point fires at most once per marker directory, so a restarted worker group does not
fail again at the same place. When it fires it writes `<dir>/<index>.fired` (pid, host, context), then:

- `kill`: SIGKILLs its own process (a crash no handler can see);
- `pause`: blocks until `<dir>/<index>.release` appears, so a test can act while the process stands exactly
  there (SIGKILL it, cut its node, stop a server), then let it go on.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

FAILPOINTS_ENV = "REASONDISTILL_FAILPOINTS"
_PAUSE_LIMIT_S = 900.0  # a forgotten pause must not hang a run forever


@functools.cache
def _armed() -> tuple[Path, list[dict[str, Any]]] | None:
    raw = os.environ.get(FAILPOINTS_ENV)
    if not raw:
        return None
    spec = json.loads(raw)
    return Path(spec["dir"]), list(spec["points"])


def failpoint(name: str, **context: Any) -> None:
    """Fire the armed point called `name` whose `when` matches `context`; a no-op when nothing is armed."""
    armed = _armed()
    if armed is None:
        return
    directory, points = armed
    for index, point in enumerate(points):
        if point["name"] != name or any(context.get(k) != v for k, v in point.get("when", {}).items()):
            continue
        try:
            fd = os.open(directory / f"{index}.fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as marker:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "name": name, "context": context}, marker)
        print(f"[failpoint] {name} {context}: {point['action']}", flush=True)
        if point["action"] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif point["action"] == "pause":
            release = directory / f"{index}.release"
            deadline = time.monotonic() + _PAUSE_LIMIT_S
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            raise ValueError(f"{FAILPOINTS_ENV}: unknown action {point['action']!r} for {name}")
