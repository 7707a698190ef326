"""A failed job's root cause as one line the submitter can print: stage, rank, exception type and message.

Ray Train wraps a worker's exception (WorkerGroupError → per-rank UserExceptionWithTraceback or
ActorDiedError); the driver prints a `REASONDISTILL_FAILURE {json}` line with what is inside, and the
submitter ends its output with it instead of only "FAILED".
"""

from __future__ import annotations

import json
import re
from typing import Any

FAILURE_MARKER = "REASONDISTILL_FAILURE "
_MESSAGE_CHARS = 600


def _unwrap(exc: BaseException) -> BaseException:
    """The user's exception inside Ray's wrappers (worker traceback holder, task error, controller error)."""
    for _ in range(10):
        inner = (
            getattr(exc, "_base_exc", None)
            or getattr(exc, "controller_failure", None)
            or (getattr(exc, "cause", None) if type(exc).__name__.startswith("RayTaskError") else None)
        )
        if not isinstance(inner, BaseException) or inner is exc:
            return exc
        exc = inner
    return exc


def _entry(exc: BaseException, rank: int | None) -> dict[str, Any]:
    cause = _unwrap(exc)
    message = " ".join(str(cause).split())[:_MESSAGE_CHARS]
    return {"rank": rank, "type": type(cause).__name__, "message": message}


_COLLATERAL_TYPES = {"ActorDiedError", "RayActorError", "DistBackendError", "DistNetworkError"}
_COLLATERAL_TEXT = re.compile(r"gloo|nccl|connection (closed|reset|refused)|broken pipe|timed out", re.IGNORECASE)


def _is_collateral(error: dict[str, Any]) -> bool:
    """A rank that died of the collective another rank left hanging, not of the cause itself."""
    return error["type"] in _COLLATERAL_TYPES or bool(_COLLATERAL_TEXT.search(error["message"]))


def describe_failure(exc: BaseException, stage: str) -> dict[str, Any]:
    """Per-rank root causes when Ray Train reports worker failures, else the driver's own exception."""
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        errors = [_entry(failure, rank) for rank, failure in sorted(failures.items())]
        errors.sort(key=_is_collateral)
    else:
        errors = [_entry(exc, None)]
    return {"stage": stage, "errors": errors}


def print_failure(exc: BaseException, stage: str) -> None:
    print(FAILURE_MARKER + json.dumps(describe_failure(exc, stage)), flush=True)


def parse_failure(logs: str) -> dict[str, Any] | None:
    for line in reversed(logs.splitlines()):
        if line.startswith(FAILURE_MARKER):
            return json.loads(line.removeprefix(FAILURE_MARKER))
    return None


def format_failure(report: dict[str, Any]) -> str:
    first = report["errors"][0]
    where = f"stage {report['stage']!r}" + (f", rank {first['rank']}" if first["rank"] is not None else "")
    lines = [f"root cause ({where}): {first['type']}: {first['message']}"]
    lines += [f"  also rank {e['rank']}: {e['type']}: {e['message'][:200]}" for e in report["errors"][1:]]
    return "\n".join(lines)
