"""The training loop that runs inside each worker: data → method loss → strategy step → eval → export."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader
from transformers import PretrainedConfig

from trainer.checkpoint_io import CheckpointIO
from trainer.checkpoint_shard import load_rank_state, save_rank_state, seal
from trainer.config.loader import flatten
from trainer.config.schema import ExperimentConfig
from trainer.data.example import DataError, QAExample
from trainer.data.feature_cache import CachedFeatures, examples_digest, load_or_build
from trainer.data.formatting import tokenizer_corpus
from trainer.data.rationales import answer_leakage
from trainer.data.registry import DatasetSplits, load_splits
from trainer.data.resumable_sampler import ResumableDistributedSampler
from trainer.evaluation.evaluator import EvalSettings
from trainer.evaluation.protocols import Evaluation
from trainer.failpoints import failpoint
from trainer.methods.base import Method
from trainer.methods.registry import method_class, spec_of
from trainer.model_selection import replace_dir, restore_selected, stash_selected
from trainer.models.factory import build_model_config, build_tokenizer, count_parameters, model_hidden_size
from trainer.models.presets import weights_tags
from trainer.strategy.deepspeed_strategy import DeepSpeedStrategy
from trainer.strategy.protocols import TrainingEngine, as_torch_module
from trainer.tracking import timeline
from trainer.tracking.mlflow_tracker import (
    FINAL_MODEL_ARTIFACT_PATH,
    Tracker,
    create_tracker,
    huggingface_input,
    resolve_tracking_uri,
    run_identity,
)


@dataclass
class TrainState:
    """What a checkpoint carries besides weights/optimizer, so a resumed run continues the same MLflow run."""

    global_step: int = 0
    mlflow_run_id: str | None = None
    wall_time_s: float = 0.0
    best_step: int | None = None  # the step whose model the run exports as `model` (model selection on dev)
    best_score: float | None = None  # its dev score (the eval result's selection_score)
    pending_metrics: list[list[Any]] = field(default_factory=list)  # undelivered to MLflow when saved

    def offer(self, score: float, always: bool = False) -> bool:
        """Is the model at the current step (now) the selected one, given its dev score? A tie keeps the earlier
        step; the selected step evaluated again (a run resumed at its end) stays selected; `always`: no selection."""
        if always or self.best_score is None or score > self.best_score:
            self.best_step, self.best_score = self.global_step, score
        return self.best_step == self.global_step


@dataclass
class TrainingResult:
    global_step: int
    metrics: dict[str, float]
    mlflow_run_id: str | None
    model_uri: str | None  # the selected model (the best dev step with run.eval_every, else the last step)
    export_dir: Path | None  # its HF directory (rank 0)
    predictions: list[dict[str, Any]] = field(default_factory=list)  # the last step's dev predictions
    final_model_uri: str | None = None  # the last step's model, when it is not the selected one
    final_export_dir: Path | None = None

    def reported(self) -> dict[str, Any]:
        """What the run reports last (to Ray Train, and as a pipeline stage's result): final metrics, run id and
        model URIs."""
        return {
            **self.metrics,
            "mlflow_run_id": self.mlflow_run_id,
            "model_uri": self.model_uri,
            "final_model_uri": self.final_model_uri,
        }


def build_trained_model(method: Method, model_config: PretrainedConfig, strategy: DeepSpeedStrategy) -> torch.nn.Module:
    """The model to train, partitioned as it is built under ZeRO-3 (the factory turns on activation checkpointing
    when model.gradient_checkpointing is set). The GPU benchmark builds its models here too, so what it measures
    is what a run trains."""
    with strategy.partitioned_init(strategy.resolved_config):
        return method.build_model(model_config)


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
        launch_id: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.checkpoint_io = checkpoint_io
        self.parent_run_id = parent_run_id
        self.run_tags = run_tags or {}
        self.launch_id = launch_id  # one per job submission: tells a worker-group restart from a re-submission
        self.strategy = DeepSpeedStrategy(cfg)
        run_dir = Path(cfg.run.output_dir) / cfg.run.name
        self.export_dir = run_dir / "export"  # the selected model
        self.final_export_dir = run_dir / "export_final"  # the last step's model when selection picked another

    def _prepare(self) -> tuple[DatasetSplits, Method, PretrainedConfig]:
        """What training and evaluation share: process group, data, tokenizer, method, model architecture."""
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
        model_config = build_model_config(cfg.model, tokenizer, tracking_uri)
        strategy.configure(model_hidden_size(model_config))
        method.setup(strategy, model_config)
        return splits, method, model_config

    def _tracker(self, resume_run_id: str | None, tags: dict[str, str] | None = None) -> Tracker:
        spec = spec_of(self.cfg)
        run_name, identity = run_identity(self.cfg, spec.run_label(self.cfg), self.run_tags)
        return create_tracker(
            self.cfg.tracking,
            self.strategy.is_rank_zero,
            run_name=run_name,
            resume_run_id=resume_run_id,
            parent_run_id=self.parent_run_id,
            tags={
                **identity,
                "method.name": spec.name,
                "headline_metric": spec.headline_metric(self.cfg),
                **weights_tags(self.cfg.model),
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
        zero_stage = 3 if strategy.training_config["zero_optimization"].get("stage") == 3 else 0
        frozen = strategy.frozen_config(model_hidden_size(model_config), zero_stage)
        with strategy.partitioned_init(frozen):
            model = strategy.prepare_frozen(method.build_model(model_config), frozen)
        method.prepare_evaluation(strategy, splits.dev)
        tracker = self._tracker(None, {"evaluates_model": cfg.model.name})
        run_id = strategy.broadcast_object(tracker.run_id)
        tracker.log_params({**flatten(cfg), "data.num_dev_examples": len(splits.dev), "run.mode": "evaluate"})
        self._log_inputs(tracker, method)
        started = time.perf_counter()
        result = method.evaluate(model, splits.dev, strategy, self._eval_settings(), strategy.generation_kwargs(model))
        metrics = {**result.metrics(), "eval/wall_time_s": time.perf_counter() - started}
        tracker.log_metrics(metrics, step=0)
        predictions = self._log_predictions(tracker, result)
        # Reported with a (tiny) checkpoint: Ray Train keeps a run's result metrics only with one.
        staging = self.checkpoint_io.staging_dir(0)
        staging.mkdir(parents=True, exist_ok=True)
        (staging / f"eval_metrics.rank{strategy.rank}.json").write_text(json.dumps(metrics))
        evaluated = TrainingResult(0, metrics, run_id, cfg.model.name, None, predictions)
        self.checkpoint_io.report(evaluated.reported(), staging)
        tracker.finish()
        return evaluated

    def fit(self) -> TrainingResult:
        cfg, strategy = self.cfg, self.strategy
        splits, method, model_config = self._prepare()
        features = build_features(method, splits.train, cfg)
        self._mark("worker.features")
        model = build_trained_model(method, model_config, strategy)
        num_parameters = count_parameters(model)
        engine = strategy.prepare(model, method.auxiliary_modules())
        method.prepare_evaluation(strategy, splits.dev)
        self._mark("worker.engine")

        sampler = ResumableDistributedSampler(
            features.dataset,
            cfg.optim.micro_batch_size,
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
            # Its own generator: each epoch's iterator draws a seed from it, which from torch's global one would
            # shift the RNG stream (dropout) of a run resumed mid-epoch against the uninterrupted run.
            generator=torch.Generator().manual_seed(cfg.run.seed),
        )

        state = TrainState()
        with self.checkpoint_io.latest() as checkpoint_dir:
            if checkpoint_dir is not None and cfg.run.resume:
                state = TrainState(**strategy.load_checkpoint(engine, checkpoint_dir))
                load_rank_state(checkpoint_dir, strategy.rank)
                if not restore_selected(checkpoint_dir, self.export_dir if strategy.is_rank_zero else None):
                    state.best_step = state.best_score = None  # a selection without its export is not kept
        resumed_from = state.global_step
        tracker = self._tracker(state.mlflow_run_id)
        state.mlflow_run_id = strategy.broadcast_object(tracker.run_id)
        tracker.requeue_metrics(state.pending_metrics)
        if tracker.resumed:
            tracker.record_restart(resumed_from, self.launch_id)
        if resumed_from == 0:
            self._log_run_setup(tracker, len(splits.train), len(features), len(splits.dev), num_parameters)
            tracker.log_input(
                huggingface_input(
                    features.dataset,
                    name=f"{cfg.data.dataset}-{method.name}-train",
                    digest=features.digest,
                    source=str(features.path),
                ),
                "training",
            )
            self._log_inputs(tracker, method)
            if method.uses_rationales:
                tracker.log_metrics(answer_leakage(splits.train, cfg.data.rationale_source, cfg.run.seed), step=0)

        eval_result = self._train(engine, method, loader, sampler, splits.dev, state, tracker)
        self._mark("worker.trained")
        if eval_result is None:  # resumed at max_steps, or the last step was not an eval step
            eval_result = self._evaluate(engine, method, splits.dev)
        self._mark("worker.evaluated")
        final_selected = state.offer(eval_result.selection_score, always=not cfg.run.eval_every)
        final_dir = self.export_dir if final_selected else self.final_export_dir
        assert state.best_step is not None and state.best_score is not None, "offer() always leaves a selection"
        self._export(engine, method, final_dir)
        if final_selected and strategy.is_rank_zero:
            shutil.rmtree(self.final_export_dir, ignore_errors=True)  # an earlier run's last step, now superseded
        final = {
            **eval_result.metrics(),
            f"dev/best_{eval_result.selection_metric}": state.best_score,
            "dev/best_step": float(state.best_step),
            "train/steps": float(state.global_step),
            "train/wall_time_s": state.wall_time_s,
            "model/num_parameters": float(num_parameters),
        }
        tracker.log_metrics(final, step=state.global_step)
        predictions = self._log_predictions(tracker, eval_result)

        staging = self._save_checkpoint(engine, state, tracker)
        log_model = cfg.tracking.log_model
        model_uri = tracker.log_model(self.export_dir, method.pyfunc) if log_model else None
        if model_uri is not None and cfg.tracking.register_as:
            dev = {key: value for key, value in final.items() if key.startswith("dev/")}
            tracker.register_model(cfg.tracking.register_as, model_uri, dev)
        final_model_uri = (
            tracker.log_model(final_dir, method.pyfunc, FINAL_MODEL_ARTIFACT_PATH)
            if log_model and not final_selected
            else None
        )
        rank_zero = strategy.is_rank_zero
        result = TrainingResult(
            state.global_step,
            final,
            state.mlflow_run_id,
            model_uri,
            self.export_dir if rank_zero else None,
            predictions,
            final_model_uri,
            final_dir if rank_zero else None,
        )
        self.checkpoint_io.report(result.reported(), staging)
        tracker.finish()
        self._mark("worker.exported")
        return result

    def _export(self, engine: TrainingEngine, method: Method, directory: Path) -> None:
        """A consolidated HF directory (a collective under ZeRO-3: every rank calls it), swapped in whole."""
        partial = directory.with_name(f"{directory.name}.partial")
        if self.strategy.is_rank_zero:
            shutil.rmtree(partial, ignore_errors=True)
        method.prepare_export(engine.module)
        self.strategy.export_model(engine, method.tokenizer, partial)
        if self.strategy.is_rank_zero:
            replace_dir(partial, directory)

    def _save_checkpoint(self, engine: TrainingEngine, state: TrainState, tracker: Tracker) -> Path:
        """Every rank writes its shard (DeepSpeed state, RNG streams; rank 0 with model selection: the selected
        model's export), then seals it once all ranks wrote."""
        strategy, step = self.strategy, state.global_step
        state.pending_metrics = tracker.pending_metrics()
        staging = self.checkpoint_io.staging_dir(step)
        strategy.save_checkpoint(engine, staging, asdict(state))
        save_rank_state(staging, strategy.rank)
        if self.cfg.run.eval_every and state.best_step is not None and strategy.is_rank_zero:
            stash_selected(self.export_dir, staging)  # a run resumed where that export is gone keeps its selection
        failpoint("checkpoint.save", step=step, rank=strategy.rank, run=self.cfg.run.name)
        strategy.barrier()
        seal(staging, strategy.rank, strategy.world_size)
        return staging

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

    def _log_inputs(self, tracker: Tracker, method: Method) -> None:
        for dataset, context in method.logged_inputs():
            tracker.log_input(dataset, context)

    @staticmethod
    def _log_predictions(tracker: Tracker, result: Evaluation) -> list[dict[str, Any]]:
        predictions = result.records()
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
            progress=self.cfg.tracking.progress_bar and self.strategy.is_rank_zero,
        )

    def _evaluate(self, engine: TrainingEngine, method: Method, dev: list[QAExample]) -> Evaluation:
        model = engine.module
        return method.evaluate(model, dev, self.strategy, self._eval_settings(), self.strategy.generation_kwargs(model))

    def _train(
        self,
        engine: TrainingEngine,
        method: Method,
        loader: DataLoader,
        sampler: ResumableDistributedSampler,
        dev: list[QAExample],
        state: TrainState,
        tracker: Tracker,
    ) -> Evaluation | None:
        """Train from state.global_step to optim.max_steps. A resumed run starts the sampler at the micro-batch
        where the checkpointed step ended (epoch and offset), so the batches it skips are never loaded or collated.

        Logged every tracking.log_every steps: the window's mean of each loss part (over its micro-batches and
        ranks), the LR, throughput, and train/grad_norm: the mean, over the window's optimizer steps, of each
        step's pre-clipping global gradient norm (of the gradient accumulated over all its micro-batches and
        ranks; see DeepSpeedStrategy.grad_norm)."""
        cfg, strategy = self.cfg, self.strategy
        first_step = state.global_step + 1
        accumulation = cfg.optim.gradient_accumulation_steps
        micro_done = state.global_step * accumulation
        epoch, skip = divmod(micro_done, sampler.batches_per_epoch)
        running: dict[str, float] = {}
        grad_norms: list[float] = []
        window_start, window_micro = time.perf_counter(), 0
        last_eval: Evaluation | None = None
        trained = as_torch_module(engine)
        engine.train()
        while state.global_step < cfg.optim.max_steps:
            sampler.set_epoch(epoch, start_batch=skip)
            for batch in loader:
                batch = {k: v.to(strategy.device) for k, v in batch.items()}
                method.progress = state.global_step / cfg.optim.max_steps
                parts = method.loss(trained, batch)
                for key, value in parts.items():
                    running[key] = running.get(key, 0.0) + float(value.detach())
                window_micro += 1
                if not strategy.backward_step(engine, parts["loss"]):
                    continue
                state.global_step += 1
                last_eval = None
                step = state.global_step
                grad_norm = strategy.grad_norm(engine)
                if grad_norm is not None:
                    grad_norms.append(grad_norm)
                if step == first_step:
                    self._mark("worker.first_step")
                failpoint("train.step", step=step, rank=strategy.rank, run=cfg.run.name)
                if step % cfg.tracking.log_every == 0 or step == cfg.optim.max_steps:
                    elapsed = time.perf_counter() - window_start
                    state.wall_time_s += elapsed
                    metrics = {f"train/{k}": strategy.all_reduce_mean(v / window_micro) for k, v in running.items()}
                    metrics["train/lr"] = strategy.current_lr(engine)
                    if grad_norms:
                        metrics["train/grad_norm"] = sum(grad_norms) / len(grad_norms)
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
                    running, grad_norms, window_start, window_micro = {}, [], time.perf_counter(), 0
                if cfg.run.eval_every and step % cfg.run.eval_every == 0:
                    last_eval = self._evaluate(engine, method, dev)
                    tracker.log_metrics(last_eval.metrics(), step=step)
                    if step < cfg.optim.max_steps and state.offer(last_eval.selection_score):  # the last step: in fit
                        self._export(engine, method, self.export_dir)
                if cfg.run.save_every and step % cfg.run.save_every == 0 and step < cfg.optim.max_steps:
                    staging = self._save_checkpoint(engine, state, tracker)
                    self.checkpoint_io.report({"train/step": step}, staging)
                if step >= cfg.optim.max_steps:
                    break
            epoch, skip = epoch + 1, 0
        return last_eval
