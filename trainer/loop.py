"""The training loop that runs inside each worker: data → method loss → strategy step → eval → export."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader, DistributedSampler
from transformers import PretrainedConfig

from trainer.checkpoint_io import CheckpointIO
from trainer.checkpoint_shard import load_rank_state, save_rank_state, seal
from trainer.config.loader import flatten
from trainer.config.schema import ExperimentConfig
from trainer.data.example import DataError, QAExample
from trainer.data.formatting import tokenizer_corpus
from trainer.data.registry import DatasetSplits, load_splits
from trainer.evaluation.evaluator import EvalResult, EvalSettings
from trainer.failpoints import failpoint
from trainer.methods.base import Features, Method
from trainer.methods.registry import method_class
from trainer.models.factory import build_model_config, build_tokenizer, count_parameters, model_hidden_size
from trainer.strategy.deepspeed_strategy import DeepSpeedStrategy
from trainer.tracking.mlflow_tracker import Tracker, create_tracker, resolve_tracking_uri


@dataclass
class TrainState:
    """What a checkpoint carries besides weights/optimizer, so a resumed run continues the same MLflow run."""

    global_step: int = 0
    mlflow_run_id: str | None = None
    wall_time_s: float = 0.0
    pending_metrics: list[list[Any]] = field(default_factory=list)  # undelivered to MLflow when saved


@dataclass
class TrainingResult:
    global_step: int
    metrics: dict[str, float]
    mlflow_run_id: str | None
    model_uri: str | None
    export_dir: Path | None
    predictions: list[dict[str, Any]] = field(default_factory=list)


def build_features(method: Method, examples: list[QAExample], seed: int) -> list[Features]:
    rng = random.Random(seed)
    features = [f for ex in examples for f in method.train_features(ex, rng)]
    if not features:
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
        launch_id: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.checkpoint_io = checkpoint_io
        self.parent_run_id = parent_run_id
        self.run_tags = run_tags or {}
        self.launch_id = launch_id  # one per job submission: tells a worker-group restart from a re-submission
        self.strategy = DeepSpeedStrategy(cfg)

    def _prepare(self) -> tuple[DatasetSplits, Method, PretrainedConfig]:
        """What training and evaluation share: process group, data, tokenizer, method, model architecture."""
        cfg, strategy = self.cfg, self.strategy
        strategy.setup_distributed()
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
        model_config = build_model_config(cfg.model, tokenizer, tracking_uri)
        strategy.configure(model_hidden_size(model_config))
        method.setup(strategy, model_config)
        return splits, method, model_config

    def _tracker(self, method: Method, resume_run_id: str | None, tags: dict[str, str] | None = None) -> Tracker:
        return create_tracker(
            self.cfg.tracking,
            self.strategy.is_rank_zero,
            run_name=self.cfg.tracking.run_name or self.cfg.run.name,
            resume_run_id=resume_run_id,
            parent_run_id=self.parent_run_id,
            tags={
                "method": method.run_label,
                "dataset": self.cfg.data.dataset,
                "model": self.cfg.model.name,
                **self.run_tags,
                **(tags or {}),
            },
            launch_id=self.launch_id,
        )

    def evaluate_model(self) -> TrainingResult:
        """Evaluate an already trained model (model.name: its dir or runs:/ URI) in a run of its own, e.g. one KARD
        student under each inference-time knowledge source. ZeRO-3 configs evaluate it partitioned."""
        cfg, strategy = self.cfg, self.strategy
        splits, method, model_config = self._prepare()
        zero_stage = 3 if strategy.resolved_config["zero_optimization"].get("stage") == 3 else 0
        frozen = strategy.frozen_config(model_hidden_size(model_config), zero_stage)
        with strategy.partitioned_init(frozen):
            model = strategy.prepare_frozen(method.build_model(model_config), frozen)
        method.prepare_evaluation(strategy, splits.dev)
        tracker = self._tracker(method, None, {"evaluates_model": cfg.model.name})
        run_id = strategy.broadcast_object(tracker.run_id)
        tracker.log_params({**flatten(cfg), "data.num_dev_examples": len(splits.dev), "run.mode": "evaluate"})
        self._log_inputs(tracker, method)
        started = time.perf_counter()
        result = method.evaluate(model, splits.dev, strategy, self._eval_settings(), strategy.generation_kwargs(model))
        metrics = {**result.metrics(), "eval/wall_time_s": time.perf_counter() - started}
        tracker.log_metrics(metrics, step=0)
        predictions = self._log_predictions(tracker, result)
        self.checkpoint_io.report({**metrics, "mlflow_run_id": run_id, "model_uri": cfg.model.name}, None)
        tracker.finish()
        return TrainingResult(0, metrics, run_id, cfg.model.name, None, predictions)

    def fit(self) -> TrainingResult:
        cfg, strategy = self.cfg, self.strategy
        splits, method, model_config = self._prepare()
        features = build_features(method, splits.train, cfg.run.seed)
        with strategy.partitioned_init(strategy.resolved_config):
            model = method.build_model(model_config)
        num_parameters = count_parameters(model)
        engine = strategy.prepare(model)
        method.prepare_evaluation(strategy, splits.dev)

        sampler = DistributedSampler(
            features,
            num_replicas=strategy.world_size,
            rank=strategy.rank,
            shuffle=True,
            seed=cfg.run.seed,
            drop_last=len(features) >= strategy.world_size,
        )
        loader = DataLoader(
            features,
            batch_size=cfg.optim.micro_batch_size,
            sampler=sampler,
            collate_fn=method.collate,
        )

        state = TrainState()
        with self.checkpoint_io.latest() as checkpoint_dir:
            if checkpoint_dir is not None and cfg.run.resume:
                state = TrainState(**strategy.load_checkpoint(engine, checkpoint_dir))
                load_rank_state(checkpoint_dir, strategy.rank)
        resumed_from = state.global_step
        tracker = self._tracker(method, state.mlflow_run_id)
        state.mlflow_run_id = strategy.broadcast_object(tracker.run_id)
        tracker.requeue_metrics(state.pending_metrics)
        if tracker.resumed:
            tracker.record_restart(resumed_from, self.launch_id)
        if resumed_from == 0:
            self._log_run_setup(tracker, len(splits.train), len(features), len(splits.dev), num_parameters)
            self._log_inputs(tracker, method)

        eval_result = self._train(engine, method, loader, sampler, splits.dev, state, tracker)
        if eval_result is None:  # resumed at max_steps, or the last step was not an eval step
            eval_result = self._evaluate(engine, method, splits.dev)
        final = {
            **eval_result.metrics(),
            "train/steps": float(state.global_step),
            "train/wall_time_s": state.wall_time_s,
            "model/num_parameters": float(num_parameters),
        }
        tracker.log_metrics(final, step=state.global_step)
        predictions = self._log_predictions(tracker, eval_result)

        staging = self._save_checkpoint(engine, state, tracker)
        export_dir = Path(cfg.run.output_dir) / cfg.run.name / "export"
        method.prepare_export(engine.module)
        strategy.export_model(engine, method.tokenizer, export_dir)
        model_uri = tracker.log_model(export_dir, method.pyfunc) if cfg.tracking.log_model else None
        self.checkpoint_io.report({**final, "mlflow_run_id": state.mlflow_run_id, "model_uri": model_uri}, staging)
        tracker.finish()
        return TrainingResult(
            state.global_step,
            final,
            state.mlflow_run_id,
            model_uri,
            export_dir if strategy.is_rank_zero else None,
            predictions,
        )

    def _save_checkpoint(self, engine: Any, state: TrainState, tracker: Tracker) -> Path:
        """Every rank writes its shard (DeepSpeed state, RNG streams), then seals it once all ranks wrote."""
        strategy, step = self.strategy, state.global_step
        state.pending_metrics = tracker.pending_metrics()
        staging = self.checkpoint_io.staging_dir(step)
        strategy.save_checkpoint(engine, staging, asdict(state))
        save_rank_state(staging, strategy.rank)
        failpoint("checkpoint.save", step=step, rank=strategy.rank, run=self.cfg.run.name)
        strategy.barrier()
        seal(staging, strategy.rank, strategy.world_size)
        return staging

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

    def _log_inputs(self, tracker: Tracker, method: Method) -> None:
        for dataset, context in method.logged_inputs():
            tracker.log_input(dataset, context)

    @staticmethod
    def _log_predictions(tracker: Tracker, result: EvalResult) -> list[dict[str, Any]]:
        predictions = [asdict(p) for p in result.predictions]
        tracker.log_jsonl(predictions, "predictions/dev.jsonl")
        tracker.log_table(result.table_rows(), "predictions/dev_table.json")
        return predictions

    def _eval_settings(self) -> EvalSettings:
        run = self.cfg.run
        return EvalSettings(
            batch_size=run.eval_batch_size,
            num_beams=run.eval_num_beams,
            vote_samples=run.eval_vote_samples,
            sample_top_k=run.eval_sample_top_k,
            sample_top_p=run.eval_sample_top_p,
            seed=run.seed,
        )

    def _evaluate(self, engine: torch.nn.Module, method: Method, dev: list[QAExample]) -> EvalResult:
        model = engine.module
        return method.evaluate(model, dev, self.strategy, self._eval_settings(), self.strategy.generation_kwargs(model))

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
                method.progress = state.global_step / cfg.optim.max_steps
                parts = method.loss(engine, batch)
                for key, value in parts.items():
                    running[key] = running.get(key, 0.0) + float(value.detach())
                window_micro += 1
                if not strategy.backward_step(engine, parts["loss"]):
                    continue
                state.global_step += 1
                last_eval = None
                step = state.global_step
                failpoint("train.step", step=step, rank=strategy.rank, run=cfg.run.name)
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
                    staging = self._save_checkpoint(engine, state, tracker)
                    self.checkpoint_io.report({"train/step": step}, staging)
                if step >= cfg.optim.max_steps:
                    break
            epoch, skip = epoch + 1, 0
        return last_eval
