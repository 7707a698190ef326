"""Phase markers: where a job's wall time goes (head start, driver, worker group, first step, eval, export).

Off unless REASONDISTILL_TIMELINE=1 (the performance benchmark sets it, and `ray_jobs.submit` passes it on to the
job): then each `mark` prints one line `REASONDISTILL_MARK {"event": ..., "t": <unix time>, ...}`. Ray forwards the
workers' stdout to the job log and the submitter streams that log, so one parse of the submitter's output puts the
submitter's, the job driver's and rank 0's events on one clock (one machine; across nodes, as good as NTP).
When off, a mark is one environment lookup.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from typing import Any

TIMELINE_ENV = "REASONDISTILL_TIMELINE"
MARKER = "REASONDISTILL_MARK "


def enabled() -> bool:
    return os.environ.get(TIMELINE_ENV) == "1"


def mark(event: str, at: float | None = None, **fields: Any) -> None:
    """Record that `event` happened now (or at unix time `at`); extra fields ride along (stage, rank, ...)."""
    if not enabled():
        return
    record = {"event": event, "t": time.time() if at is None else at, "pid": os.getpid(), **fields}
    print(MARKER + json.dumps(record, default=str), flush=True)


def process_start_time() -> float:
    """Unix time this process was created: its interpreter start and imports count as its own set-up."""
    import psutil  # installed with ray; imported here so the module stays import-light

    return psutil.Process().create_time()


def parse_marks(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Every marker in a log once, in time order; Ray's `(Worker pid=…)` prefixes are skipped (Ray Train's
    workers can forward one print twice, so repeats of a (event, time, pid) are dropped)."""
    marks: dict[tuple[Any, ...], dict[str, Any]] = {}
    for line in lines:
        start = line.find(MARKER)
        if start >= 0:
            mark = json.loads(line[start + len(MARKER) :])
            marks.setdefault((mark["event"], mark["t"], mark.get("pid")), mark)
    return sorted(marks.values(), key=lambda m: m["t"])
