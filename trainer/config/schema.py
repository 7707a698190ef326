"""Typed experiment configuration: one pydantic model per concern, unknown keys rejected."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, SerializeAsAny, ValidatorFunctionWrapHandler, field_validator, model_validator

from trainer.config.fields import FieldRole, LocalPath, ModelSource
from trainer.config.sections import MethodSection
from trainer.config.sections import Section as _Section

DEFAULT_METHOD = "ft_io"
RUN_NAME_FIELDS = ("name", "method", "dataset", "model", "seed", "pipeline", "stage")  # tracking.run_name_template


class ModelConfig(_Section):
    """Which seq2seq model to train: an HF hub name, a local path, an MLflow model URI, or a preset
    (trainer/models/presets.py: tiny offline shapes and the published T5 / T5 v1.1 / Flan-T5 architectures)."""

    name: Annotated[str, FieldRole.MODEL_SOURCE] = "t5-tiny"
    tokenizer: ModelSource = Field(
        default=None,
        description="HF name/path of the tokenizer; defaults to the model's own. "
        "Presets build a word-level tokenizer offline from the training data.",
    )
    tokenizer_vocab_size: int = Field(default=4000, ge=64)
    init: Literal["auto", "pretrained", "random"] = Field(
        default="auto",
        description="published presets (t5-base, flan-t5-xl, ...): pretrained weights when they can be had (auto), "
        "always (pretrained: fail otherwise), or never (random: the same architecture randomly initialised)",
    )
    weights_from: ModelSource = Field(
        default=None, description="published presets: a local HF directory (or hub name) holding their weights"
    )
    gradient_checkpointing: bool = Field(
        default=False, description="recompute each block's activations in backward: less memory, ~1/3 more compute"
    )


class DataConfig(_Section):
    """Which question set to load and how to cut it."""

    dataset: str = "strategyqa"
    train_path: LocalPath = Field(default=None, description="JSONL(.gz) for the generic `jsonl` dataset")
    dev_path: LocalPath = None
    data_dir: LocalPath = Field(
        default=None,
        description="Root of the shared data; default: $REASONDISTILL_DATA_DIR or ../shared/data",
    )
    train_fraction: float = Field(default=1.0, gt=0.0, le=1.0, description="low-resource runs: keep this share")
    dev_fraction: float = Field(
        default=0.1, gt=0.0, lt=1.0, description="share held out as dev when a dataset has no dev file"
    )
    max_train_examples: int | None = Field(default=None, ge=1)
    max_dev_examples: int | None = Field(default=None, ge=1)
    max_input_length: int = Field(default=128, ge=8)
    max_rationale_length: int = Field(default=128, ge=8)
    max_target_length: int = Field(default=32, ge=2)
    rationale_source: Literal["facts", "llm_first", "llm_random", "llm_all"] = "facts"
    rationale_filter: Literal["none", "parse", "verifier"] = Field(
        default="none",
        description="keep only LLM rationales that lead to the gold answer: by parsing their own final answer, "
        "or by a verifier model (data.verifier_model) that must pick the gold choice after reading them",
    )
    keep_unstated_rationales: bool = Field(
        default=True, description="parse filter: keep rationales that state no final answer (the verifier decides all)"
    )
    verifier_model: ModelSource = Field(default=None, description="seq2seq verifier: HF name, path or runs:/ URI")
    synthetic_seed: int = Field(default=0, description="world seed of the `synthetic` and `synthetic_kb` datasets")
    feature_cache_dir: LocalPath = Field(
        default=None,
        description="tokenised training features shared by every run on a node (built once per dataset, method, "
        "tokenizer and lengths); default <run.output_dir>/cache/features",
    )

    @model_validator(mode="after")
    def _verifier_needs_a_model(self) -> DataConfig:
        if self.rationale_filter == "verifier" and not self.verifier_model:
            raise ValueError("data.rationale_filter=verifier needs data.verifier_model")
        return self


class OptimConfig(_Section):
    """Optimisation schedule; steps count optimizer steps (after gradient accumulation)."""

    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    decay_norm_and_bias: bool = Field(
        default=False,
        description="apply weight_decay to biases and normalisation weights too (T5LayerNorm, any *norm* "
        "module); by default they form a parameter group of their own without decay. Embeddings are always decayed",
    )
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0.0)
    warmup_steps: int = Field(default=0, ge=0)
    max_steps: int = Field(default=100, ge=1)
    micro_batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    gradient_clipping: float = Field(default=1.0, ge=0.0)


class DeepSpeedConfig(_Section):
    """How DeepSpeed shards the run; the template's "auto" values are filled from the rest of the config.

    One setting decides the stage: `zero_stage` alone picks the built-in template zero{N}; a template alone runs
    its own stage; both set must agree (a JSON template is checked when it is read: trainer.strategy.ds_config).
    """

    template: str = Field(
        default="zero2",
        description="name in ds_configs/ (zero0 ... zero3) or a JSON path; default zero{ds.zero_stage}, else zero2",
    )
    zero_stage: Literal[0, 1, 2, 3, "auto"] | None = Field(
        default=None,
        description="the ZeRO stage, which picks the template zero{N} when ds.template is not set; auto: the memory "
        "planner (trainer.planning) picks the stage, offload and gradient checkpointing for the `cluster` hardware "
        "when the job is submitted or rendered",
    )
    offload_optimizer: bool = False
    offload_param: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"

    @model_validator(mode="before")
    @classmethod
    def _stage_picks_the_template(cls, data: Any) -> Any:
        """`zero_stage: 3` alone runs zero3.json, with its stage-3 settings, not zero2.json's with stage 3."""
        if isinstance(data, dict) and "template" not in data:
            stage = data.get("zero_stage")
            if type(stage) is int and 0 <= stage <= 3:
                return {**data, "template": f"zero{stage}"}
        return data

    @model_validator(mode="after")
    def _one_stage(self) -> DeepSpeedConfig:
        builtin = re.fullmatch(r"zero([0-3])", self.template)
        if builtin and isinstance(self.zero_stage, int) and int(builtin[1]) != self.zero_stage:
            raise ValueError(
                f"ds.zero_stage={self.zero_stage} contradicts ds.template={self.template} (stage {builtin[1]}); set "
                f"one of them: ds.zero_stage alone picks the template zero{self.zero_stage}"
            )
        if self.offload_param and self.zero_stage not in (None, 3, "auto"):
            raise ValueError("ds.offload_param needs ds.zero_stage=3")
        return self


class TrackingConfig(_Section):
    """MLflow; the URI and experiment fall back to MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME."""

    tracking_uri: str | None = None
    experiment: str | None = None
    run_name: str | None = None
    log_model: bool = True
    log_every: int = Field(default=10, ge=1)
    tags: dict[str, str] = Field(default_factory=dict)
    max_outage_s: float = Field(
        default=900.0, gt=0.0, description="how long metrics may wait for an unreachable MLflow before the run fails"
    )
    max_buffered_metrics: int = Field(default=200_000, ge=1, description="undelivered metrics held in memory at most")
    run_name_template: str = Field(
        default="{name} · {dataset} · {model} · seed {seed}",
        description="a run's name in the MLflow UI; fields: name (run_name, else the method), method, dataset, "
        "model, seed, pipeline, stage",
    )
    system_metrics: bool = Field(default=True, description="MLflow's CPU/memory/disk/network/GPU metrics on rank 0")
    system_metrics_interval_s: float = Field(default=10.0, gt=0.0, description="seconds between system samples")
    register_as: str | None = Field(
        default=None, description="register the run's selected model under this name, alias `candidate`"
    )
    progress_bar: bool = Field(default=True, description="tqdm bars for evaluation and generation (rank 0, a TTY)")

    @field_validator("run_name_template")
    @classmethod
    def _known_name_fields(cls, template: str) -> str:
        fields = dict.fromkeys(RUN_NAME_FIELDS, "x")
        try:
            template.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{template!r}: {exc!r}; known fields: {', '.join(RUN_NAME_FIELDS)}") from None
        return template

    @model_validator(mode="after")
    def _registered_model_is_logged(self) -> TrackingConfig:
        if self.register_as and not self.log_model:
            raise ValueError("tracking.register_as: registering needs the model logged (tracking.log_model: true)")
        return self


class RunConfig(_Section):
    """Where and how wide the run goes."""

    name: str = "reasondistill"
    output_dir: str = "runs"
    storage_path: str | None = Field(
        default=None, description="Ray Train storage (shared FS or s3://); default: <output_dir>/ray"
    )
    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0.0)
    seed: int = 42
    eval_every: int = Field(default=0, ge=0, description="optimizer steps between dev evaluations; 0 = end only")
    save_every: int = Field(default=0, ge=0, description="optimizer steps between checkpoints; 0 = end only")
    eval_batch_size: int = Field(default=32, ge=1)
    eval_num_beams: int = Field(default=1, ge=1, description="beams for the greedy-generation view")
    eval_vote_samples: int = Field(
        default=0, ge=0, description="sampled outputs per dev question for a self-consistency vote; 0 = off"
    )
    eval_sample_top_k: int = Field(default=50, ge=0)
    eval_sample_top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    resume: bool = True
    max_failures: int = Field(default=0, ge=-1, description="Ray Train worker-group restarts; -1 = unlimited")


class RetrievalConfig(_Section):
    """Where KARD's knowledge comes from: one interface, three modes.

    embedded: a tantivy index in-process (built from `corpus` when missing); http: the retrieval service
    (`url`, bearer token from the env var named by `token_env`); elasticsearch: an alias on the cluster at `url`
    (credentials from ELASTICSEARCH_* env vars, see docs/retrieval_service.md).
    """

    mode: Literal["embedded", "http", "elasticsearch"] = "embedded"
    corpus: LocalPath = Field(
        default=None, description="id/title/text JSONL(.gz); default: the shared Wikipedia passages"
    )
    index: str | None = Field(
        default=None, description="embedded: index dir (default: under cache_dir, keyed by corpus); ES: alias"
    )
    url: str | None = Field(default=None, description="http: service URL; elasticsearch: cluster URL(s)")
    token_env: str = Field(default="RETRIEVAL_API_TOKEN", description="env var holding the service's bearer token")
    cache_dir: LocalPath = Field(
        default=None, description="knowledge datasets and indexes; default <output_dir>/knowledge"
    )
    batch_size: int = Field(default=64, ge=1, description="queries per search_batch call")
    actors: int = Field(default=2, ge=1, description="Ray Data actors querying the backend in parallel")
    timeout_s: float = Field(default=30.0, gt=0.0)
    retries: int = Field(default=3, ge=0)


class ClusterConfig(_Section):
    """The hardware a run is planned for: `ds.zero_stage=auto` and the Kubernetes RayJob's pod sizes come from it."""

    gpus_per_node: int = Field(default=8, ge=1, description="GPUs (one Ray Train worker each) per GPU node")
    gpu_memory_gib: float = Field(default=80.0, gt=0.0, description="memory of one GPU")
    node_memory_gib: float = Field(
        default=512.0, gt=0.0, description="host memory of one GPU node (CPU offload), or of one CPU-only worker pod"
    )


class ExperimentConfig(_Section):
    """The whole run, as loaded from YAML plus dotted overrides."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: SerializeAsAny[MethodSection] = Field(
        default_factory=lambda: {"name": DEFAULT_METHOD},
        validate_default=True,
        description="the training method: `name` picks a registered method, the rest is that method's section",
    )
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    ds: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @field_validator("method", mode="wrap")
    @classmethod
    def _method_section(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> MethodSection:
        """Validate `method` against the section of the method its `name` picks (so errors name its fields)."""
        from trainer.methods.registry import method_spec  # the registry imports method packages, not this schema

        if isinstance(value, MethodSection):
            return value
        name = value.get("name", DEFAULT_METHOD) if isinstance(value, dict) else None
        if not isinstance(name, str):
            return handler(value)  # the base section names what is wrong (not a mapping, `name` not a string)
        return method_spec(name).config.model_validate(value)
