"""Metric delivery that survives an MLflow outage: queued in memory, sent by a background thread, bounded.

Training calls `add` and goes on; a sender thread delivers batches and keeps them queued while MLflow is
unreachable. The bounds are `tracking.max_outage_s` (the oldest undelivered metric's age) and
`tracking.max_buffered_metrics`: past either, `add`/`flush` raise `TrackingUnavailableError` naming the
server, so a run never loses metrics silently. Undelivered metrics also travel in checkpoints (`pending`),
so even a rank-0 crash during an outage loses none of the steps it had reached.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # MLflow is imported by whoever builds the client (trainer.tracking.mlflow_tracker), when it does
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

_BATCH = 1000  # MLflow's log_batch limit for metrics
_RETRY_PAUSE_S = (0.5, 1.0, 2.0, 5.0)


class TrackingUnavailableError(RuntimeError):
    """MLflow stayed unreachable longer than the run allows; the message names the server and the limit."""


class MetricBuffer:
    def __init__(self, client: MlflowClient, run_id: str, max_buffered: int, max_outage_s: float, server: str) -> None:
        self._client = client
        self._run_id = run_id
        self._max_buffered = max_buffered
        self._max_outage_s = max_outage_s
        self._server = server
        self._queue: list[tuple[Metric, float]] = []  # (metric, monotonic time queued)
        self._in_flight: list[tuple[Metric, float]] = []
        self._last_step: dict[str, int] = {}
        self._last_error = ""
        self._failures = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._send_loop, name="mlflow-metrics", daemon=True)
        self._thread.start()

    # ---- producer side ----------------------------------------------------------------------------
    def skip_logged(self, keys: list[str]) -> None:
        """Remember the last step already stored per key (a resumed run), so replayed steps are not re-logged."""
        for key in keys:
            steps = [m.step for m in self._client.get_metric_history(self._run_id, key)]
            if steps:
                self._last_step[key] = max(steps)

    def add(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        from mlflow.entities import Metric

        self.check()
        now_ms = timestamp_ms or int(time.time() * 1000)
        with self._cond:
            for key, value in metrics.items():
                if step <= self._last_step.get(key, -1):
                    continue  # this run already has a value for (key, step)
                self._last_step[key] = step
                self._queue.append((Metric(key, float(value), now_ms, step), time.monotonic()))
            self._cond.notify()

    def pending(self) -> list[list[Any]]:
        with self._cond:
            return [[m.key, m.value, m.timestamp, m.step] for m, _ in [*self._in_flight, *self._queue]]

    def requeue(self, rows: list[list[Any]]) -> None:
        for key, value, timestamp, step in rows:
            self.add({key: value}, int(step), int(timestamp))

    def check(self) -> None:
        """Raise TrackingUnavailableError when the outage or the backlog went past its limit."""
        with self._cond:
            waiting = [queued for _, queued in [*self._in_flight, *self._queue]]
            backlog, error = len(waiting), self._last_error
            age = time.monotonic() - min(waiting) if waiting else 0.0
        if backlog > self._max_buffered:
            raise TrackingUnavailableError(
                f"MLflow at {self._server}: {backlog} metrics undelivered, over tracking.max_buffered_metrics="
                f"{self._max_buffered} (last error: {error or 'none yet'})"
            )
        if age > self._max_outage_s:
            raise TrackingUnavailableError(
                f"MLflow at {self._server} unreachable: metrics undelivered for {age:.0f}s, over "
                f"tracking.max_outage_s={self._max_outage_s:g} ({backlog} waiting; last error: {error or 'none'})"
            )

    def flush(self) -> None:
        """Block until everything queued is delivered, or raise once the outage limit passes."""
        while True:
            with self._cond:
                if not self._queue and not self._in_flight:
                    return
                self._cond.notify()
                self._cond.wait(timeout=0.2)
            self.check()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    # ---- sender thread ----------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed and not self._queue:
                    return
                self._in_flight, self._queue = self._queue[:_BATCH], self._queue[_BATCH:]
                batch = [m for m, _ in self._in_flight]
            try:
                self._client.log_batch(self._run_id, metrics=batch)
            except Exception as exc:  # any delivery failure keeps the batch queued
                with self._cond:
                    self._queue = self._in_flight + self._queue
                    self._in_flight = []
                    self._last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                    self._failures += 1
                    pause = _RETRY_PAUSE_S[min(self._failures - 1, len(_RETRY_PAUSE_S) - 1)]
                    self._cond.wait(timeout=pause)
                continue
            with self._cond:
                self._in_flight = []
                self._failures = 0
                self._last_error = ""
                self._cond.notify_all()
