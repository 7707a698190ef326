"""A failed job's root cause, dug out of Ray Train's wrappers: stage, rank, exception type and message."""

from __future__ import annotations

from ray.train import WorkerGroupError
from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

from ray_jobs.failure_report import FAILURE_MARKER, describe_failure, format_failure, parse_failure
from trainer.data.example import DataError


def test_worker_exception_is_the_root_cause() -> None:
    error = WorkerGroupError(
        "Training failed",
        {
            0: RuntimeError("Connection closed by peer"),
            1: UserExceptionWithTraceback(DataError("data file not found: /nope.jsonl"), "Traceback ...\n"),
        },
    )
    report = describe_failure(error, "knife/student")
    assert report["errors"][1] == {"rank": 0, "type": "RuntimeError", "message": "Connection closed by peer"}
    line = FAILURE_MARKER + __import__("json").dumps(report)
    assert parse_failure(f"noise\n{line}\nmore noise") == report
    text = format_failure(report)
    assert text.startswith("root cause (stage 'knife/student', rank 1): DataError: data file not found: /nope.jsonl")
