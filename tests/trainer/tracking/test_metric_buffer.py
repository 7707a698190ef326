"""The tracking facade against a real `mlflow server` that goes away: metrics wait and arrive when it is back,
or the run fails with a clear error once the configured outage limit passes; nothing is logged twice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from support.services import MLflowServer
from trainer.config.loader import load_config
from trainer.config.schema import TrackingConfig
from trainer.tracking.metric_buffer import TrackingUnavailableError
from trainer.tracking.mlflow_tracker import MLflowTracker

pytestmark = pytest.mark.slow  # own MLflow server; in `make test` (the cluster fault tests: `make test-reliability`)


def tracking(server: MLflowServer, max_outage_s: float) -> TrackingConfig:
    overrides = [f"tracking.tracking_uri={server.uri}", "tracking.experiment=buffer"]
    return load_config(overrides=[*overrides, f"tracking.max_outage_s={max_outage_s}"]).tracking


def steps(server: MLflowServer, run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(server.uri).get_metric_history(run_id, "train/loss"))


def test_outage_buffers_then_delivers_or_fails_clearly(tmp_path: Path) -> None:
    server = MLflowServer("127.0.0.1", f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path).start()
    try:
        tracker = MLflowTracker(tracking(server, 600), run_name="buffered")
        tracker.log_metrics({"train/loss": 1.0}, step=1)
        tracker.flush()
        server.process.kill()
        started = time.monotonic()
        for step in (2, 3, 4):
            tracker.log_metrics({"train/loss": float(step)}, step=step)  # returns at once: training goes on
        tracker.log_metrics({"train/loss": 9.0}, step=3)  # a replayed step is not logged twice
        assert time.monotonic() - started < 60 and len(tracker.pending_metrics()) == 3
        server.start()  # same port, same store
        tracker.finish()
        assert steps(server, tracker.run_id) == [1, 2, 3, 4]

        # A resumed tracker knows what the run already has and drops the replayed steps.
        resumed = MLflowTracker(tracking(server, 600), run_name="buffered", resume_run_id=tracker.run_id)
        resumed.log_metrics({"train/loss": 3.0}, step=3)
        resumed.log_metrics({"train/loss": 5.0}, step=5)
        resumed.finish()
        assert steps(server, tracker.run_id) == [1, 2, 3, 4, 5]

        short = MLflowTracker(tracking(server, 2), run_name="short")
        server.process.kill()
        short.log_metrics({"train/loss": 1.0}, step=1)
        time.sleep(3)
        with pytest.raises(TrackingUnavailableError, match=f"MLflow at {server.uri} unreachable: .*max_outage_s=2"):
            short.log_metrics({"train/loss": 2.0}, step=2)
        with pytest.raises(TrackingUnavailableError):
            short.flush()
    finally:
        server.stop()
