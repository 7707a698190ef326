"""The training loop that runs inside each worker: data → method loss → strategy step → eval → export."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader, DistributedSampler

from trainer.checkpoint_io import CheckpointIO
from trainer.config.loader import flatten
from trainer.config.schema import ExperimentConfig
from trainer.data.example import DataError, QAExample
from trainer.data.feature_cache import CachedFeatures, examples_digest, load_or_build
from trainer.data.formatting import tokenizer_corpus
from trainer.data.registry import load_splits
from trainer.evaluation.evaluator import EvalResult, EvalSettings, evaluate
from trainer.methods.base import Method
from trainer.methods.registry import method_class
from trainer.models.factory import build_model, build_model_config, build_tokenizer, count_parameters
from trainer.strategy.deepspeed_strategy import DeepSpeedStrategy
from trainer.tracking import timeline
from trainer.tracking.mlflow_tracker import Tracker, create_tracker, resolve_tracking_uri


@dataclass
class TrainState:
    """What a checkpoint carries besides weights/optimizer, so a resumed run continues the same MLflow run."""

    global_step: int = 0
    mlflow_run_id: str | None = None
    wall_time_s: float = 0.0


@dataclass
class TrainingResult:
    global_step: int
    metrics: dict[str, float]
    mlflow_run_id: str | None
    model_uri: str | None
    export_dir: Path | None
    predictions: list[dict[str, Any]] = field(default_factory=list)


def feature_cache_dir(cfg: ExperimentConfig) -> Path:
    return Path(cfg.data.feature_cache_dir or Path(cfg.run.output_dir) / "cache" / "features")


def build_features(method: Method, examples: list[QAExample], cfg: ExperimentConfig) -> CachedFeatures:
    """The training features, built once per fingerprint (examples, method, tokenizer, lengths; the seed when the
    method draws at random) and loaded from the node's Arrow cache by every later rank, stage, seed or resubmission."""
    fingerprint = {**method.feature_fingerprint(), "examples": examples_digest(examples)}
    features = load_or_build(feature_cache_dir(cfg), fingerprint, examples, method.train_features, cfg.run.seed)
    if not len(features):
        raise DataError(
            f"method {method.name!r} found no usable training example: data.rationale_source="
            f"{method.cfg.data.rationale_source!r} gives no rationale for dataset {method.cfg.data.dataset!r}"
        )
    return features


class Trainer:
    """One training run on one rank; all ranks construct it and call `fit` together."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        checkpoint_io: CheckpointIO,
        parent_run_id: str | None = None,
        run_tags: dict[str, str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.checkpoint_io = checkpoint_io
        self.parent_run_id = parent_run_id
        self.run_tags = run_tags or {}
        self.strategy = DeepSpeedStrategy(cfg)

    def fit(self) -> TrainingResult:
        cfg, strategy = self.cfg, self.strategy
        strategy.setup_distributed()
        self._mark("worker.fit")
        splits = load_splits(cfg.data, cfg.run.seed)
        method_cls = method_class(cfg)
        tracking_uri = resolve_tracking_uri(cfg.tracking)
        tokenizer = build_tokenizer(
            cfg.model,
            corpus=lambda: tokenizer_corpus(splits.train),
            broadcast=strategy.broadcast_object,
            source=method_cls.tokenizer_source(cfg),
            tracking_uri=tracking_uri,
        )
        method = method_cls(cfg, tokenizer)
        features = build_features(method, splits.train, cfg)
        self._mark("worker.features")
        model_config = build_model_config(cfg.model, tokenizer, tracking_uri)
        strategy.configure(model_config.d_model)
        method.setup(strategy, model_config)
        with strategy.partitioned_init(strategy.resolved_config):
            model = build_model(cfg.model, model_config)
        num_parameters = count_parameters(model)
        engine = strategy.prepare(model)
        self._mark("worker.engine")

        sampler = DistributedSampler(
            features.dataset,
            num_replicas=strategy.world_size,
            rank=strategy.rank,
            shuffle=True,
            seed=cfg.run.seed,
            drop_last=len(features) >= strategy.world_size,
        )
        loader = DataLoader(
            features.dataset,
            batch_size=cfg.optim.micro_batch_size,
            sampler=sampler,
            collate_fn=method.collate,
        )

        state = TrainState()
        with self.checkpoint_io.latest() as checkpoint_dir:
            if checkpoint_dir is not None and cfg.run.resume:
                state = TrainState(**strategy.load_checkpoint(engine, checkpoint_dir))
        resumed_from = state.global_step
        tracker = create_tracker(
            cfg.tracking,
            strategy.is_rank_zero,
            run_name=cfg.tracking.run_name or cfg.run.name,
            resume_run_id=state.mlflow_run_id,
            parent_run_id=self.parent_run_id,
            tags={
                "method": cfg.method.name,
                "dataset": cfg.data.dataset,
                "model": cfg.model.name,
                **self.run_tags,
            },
        )
        state.mlflow_run_id = strategy.broadcast_object(tracker.run_id)
        if resumed_from == 0:
            self._log_run_setup(tracker, len(splits.train), len(features), len(splits.dev), num_parameters)
            tracker.log_input(
                features.dataset,
                name=f"{cfg.data.dataset}-{method.name}-train",
                digest=features.digest,
                source=str(features.path),
                context="training",
            )
        else:
            tracker.set_tags({"resumed_from_step": str(resumed_from)})

        eval_result = self._train(engine, method, loader, sampler, splits.dev, state, tracker)
        self._mark("worker.trained")
        if eval_result is None:  # resumed at max_steps, or the last step was not an eval step
            eval_result = self._evaluate(engine, method, splits.dev)
        self._mark("worker.evaluated")
        final = {
            **eval_result.metrics(),
            "train/steps": float(state.global_step),
            "train/wall_time_s": state.wall_time_s,
            "model/num_parameters": float(num_parameters),
        }
        tracker.log_metrics(final, step=state.global_step)
        predictions = [asdict(p) for p in eval_result.predictions]
        tracker.log_jsonl(predictions, "predictions/dev.jsonl")
        tracker.log_table(eval_result.table_rows(), "predictions/dev_table.json")

        staging = self.checkpoint_io.staging_dir(state.global_step)
        strategy.save_checkpoint(engine, staging, asdict(state))
        export_dir = Path(cfg.run.output_dir) / cfg.run.name / "export"
        engine.module.generation_config.max_new_tokens = method.max_new_tokens()
        strategy.export_model(engine, tokenizer, export_dir)
        model_uri = tracker.log_model(export_dir) if cfg.tracking.log_model else None
        self.checkpoint_io.report({**final, "mlflow_run_id": state.mlflow_run_id, "model_uri": model_uri}, staging)
        tracker.finish()
        self._mark("worker.exported")
        return TrainingResult(
            state.global_step,
            final,
            state.mlflow_run_id,
            model_uri,
            export_dir if strategy.is_rank_zero else None,
            predictions,
        )

    def _mark(self, event: str) -> None:
        if self.strategy.is_rank_zero:
            timeline.mark(event, run=self.cfg.run.name)

    def _log_run_setup(self, tracker: Tracker, n_examples: int, n_features: int, n_dev: int, n_params: int) -> None:
        tracker.log_params(
            {
                **flatten(self.cfg),
                "data.num_train_examples": n_examples,
                "data.num_train_features": n_features,
                "data.num_dev_examples": n_dev,
                "model.num_parameters": n_params,
                "run.world_size": self.strategy.world_size,
            }
        )
        tracker.log_text(yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False), "config/config.yaml")
        tracker.log_dict(self.strategy.resolved_config, "config/deepspeed.json")

    def _evaluate(self, engine: torch.nn.Module, method: Method, dev: list[QAExample]) -> EvalResult:
        run = self.cfg.run
        settings = EvalSettings(
            batch_size=run.eval_batch_size,
            num_beams=run.eval_num_beams,
            vote_samples=run.eval_vote_samples,
            sample_top_k=run.eval_sample_top_k,
            sample_top_p=run.eval_sample_top_p,
            seed=run.seed,
        )
        return evaluate(method, engine.module, dev, self.strategy, settings, self.strategy.generation_kwargs(engine))

    def _train(
        self,
        engine: Any,
        method: Method,
        loader: DataLoader,
        sampler: DistributedSampler,
        dev: list[QAExample],
        state: TrainState,
        tracker: Tracker,
    ) -> EvalResult | None:
        cfg, strategy = self.cfg, self.strategy
        first_step = state.global_step + 1
        accumulation = cfg.optim.gradient_accumulation_steps
        micro_done = state.global_step * accumulation
        epoch, skip = divmod(micro_done, len(loader))
        running: dict[str, float] = {}
        window_start, window_micro = time.perf_counter(), 0
        last_eval: EvalResult | None = None
        engine.train()
        while state.global_step < cfg.optim.max_steps:
            sampler.set_epoch(epoch)
            for index, batch in enumerate(loader):
                if index < skip:
                    continue
                batch = {k: v.to(strategy.device) for k, v in batch.items()}
                parts = method.loss(engine, batch)
                for key, value in parts.items():
                    running[key] = running.get(key, 0.0) + float(value.detach())
                window_micro += 1
                if not strategy.backward_step(engine, parts["loss"]):
                    continue
                state.global_step += 1
                last_eval = None
                step = state.global_step
                if step == first_step:
                    self._mark("worker.first_step")
                if step % cfg.tracking.log_every == 0 or step == cfg.optim.max_steps:
                    elapsed = time.perf_counter() - window_start
                    state.wall_time_s += elapsed
                    metrics = {f"train/{k}": strategy.all_reduce_mean(v / window_micro) for k, v in running.items()}
                    metrics["train/lr"] = strategy.current_lr(engine)
                    metrics["train/samples_per_s"] = (
                        window_micro * cfg.optim.micro_batch_size * strategy.world_size / max(elapsed, 1e-9)
                    )
                    tracker.log_metrics(metrics, step=step)
                    if strategy.is_rank_zero:
                        print(
                            f"step {step}/{cfg.optim.max_steps} loss {metrics['train/loss']:.4f} "
                            f"lr {metrics['train/lr']:.2e}",
                            flush=True,
                        )
                    running, window_start, window_micro = {}, time.perf_counter(), 0
                if cfg.run.eval_every and step % cfg.run.eval_every == 0:
                    last_eval = self._evaluate(engine, method, dev)
                    tracker.log_metrics(last_eval.metrics(), step=step)
                if cfg.run.save_every and step % cfg.run.save_every == 0 and step < cfg.optim.max_steps:
                    staging = self.checkpoint_io.staging_dir(step)
                    strategy.save_checkpoint(engine, staging, asdict(state))
                    self.checkpoint_io.report({"train/step": step}, staging)
                if step >= cfg.optim.max_steps:
                    break
            epoch, skip = epoch + 1, 0
        return last_eval
