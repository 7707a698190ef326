"""Run one training job without Ray: `torchrun --nproc-per-node 2 -m trainer.train CONFIG [k=v ...]`.

With `--evaluate`, the model named by model.name (a dir or runs:/ URI) is evaluated in a run of its own instead.

Ray jobs (ray_jobs.submit) are the main entry; this one serves single-node debugging and the tests
that exercise the strategy directly. Checkpoints go to <output_dir>/<run.name>/checkpoints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.checkpoint_io import LocalCheckpointIO
from trainer.config.loader import load_config, split_config_args
from trainer.loop import Trainer
from trainer.planning.from_config import resolve_auto_zero


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("args", nargs="*", help="[CONFIG.yaml] then dotted overrides, e.g. ds.zero_stage=3")
    parser.add_argument("--evaluate", action="store_true", help="evaluate model.name without training")
    args = parser.parse_args(argv)
    cfg = resolve_auto_zero(load_config(*split_config_args(args.args)))
    checkpoints = LocalCheckpointIO(Path(cfg.run.output_dir) / cfg.run.name / "checkpoints")
    trainer = Trainer(cfg, checkpoints)
    result = trainer.evaluate_model() if args.evaluate else trainer.fit()
    if trainer.strategy.is_rank_zero:
        print(
            json.dumps(
                {
                    "global_step": result.global_step,
                    "metrics": result.metrics,
                    "mlflow_run_id": result.mlflow_run_id,
                    "model_uri": result.model_uri,
                    "final_model_uri": result.final_model_uri,
                    "export_dir": str(result.export_dir),
                    "final_export_dir": str(result.final_export_dir),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
