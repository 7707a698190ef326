"""What a training method is: how it turns examples into features, its loss, and how it answers."""

from __future__ import annotations

import inspect
import random
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from mlflow.data.dataset import Dataset
from transformers import PretrainedConfig, PreTrainedTokenizerBase
from transformers.modeling_outputs import BaseModelOutput

from trainer.config.schema import ExperimentConfig
from trainer.data.collate import pad_batch
from trainer.data.example import QAExample
from trainer.data.feature_cache import source_digest, tokenizer_digest
from trainer.data.formatting import format_choice, parse_choice
from trainer.data.rationales import select_rationales
from trainer.evaluation.evaluator import EvalResult, EvalSettings, evaluate
from trainer.models.factory import build_model
from trainer.models.t5_knife import encode
from trainer.objectives.task import token_cross_entropy
from trainer.tracking.mlflow_tracker import SEQ2SEQ_PYFUNC, PyfuncSpec

Features = dict[str, Any]
Batch = dict[str, torch.Tensor]
# Data settings a method's features are built from (the examples themselves are fingerprinted by the cache).
FEATURE_DATA_FIELDS = (
    "dataset",
    "max_input_length",
    "max_rationale_length",
    "max_target_length",
    "rationale_source",
    "rationale_filter",
    "keep_unstated_rationales",
    "verifier_model",
)
DATA_PACKAGE = Path(__file__).resolve().parents[1] / "data"


class Method(ABC):
    """A named training recipe (config `method.name`); subclasses register in trainer.methods.registry.

    Defaults describe a seq2seq (T5) student evaluated by choice scoring; a method with another kind of model
    (KARD's reranker) overrides the model hooks: build_model, evaluate, prepare_export and pyfunc.
    """

    name: ClassVar[str]
    uses_rationales: ClassVar[bool] = False
    pyfunc: ClassVar[PyfuncSpec] = SEQ2SEQ_PYFUNC

    def __init__(self, cfg: ExperimentConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.progress = 0.0  # share of optimizer steps done; schedules inside objectives read it

    @property
    def run_label(self) -> str:
        """What this run is called in comparisons (the `method` tag)."""
        return self.name

    def build_model(self, model_config: PretrainedConfig) -> torch.nn.Module:
        """The trained model, built inside the strategy's partitioned-init context."""
        return build_model(self.cfg.model, model_config)

    def prepare_evaluation(self, strategy: Any, examples: list[QAExample]) -> None:  # noqa: B027 - most need nothing
        """Once, before the first dev evaluation: precompute what evaluation reads (KARD: the dev passages)."""

    def evaluate(
        self,
        model: torch.nn.Module,
        examples: list[QAExample],
        strategy: Any,
        settings: EvalSettings,
        generation_kwargs: dict[str, Any],
    ) -> EvalResult:
        return evaluate(self, model, examples, strategy, settings, generation_kwargs)

    def prepare_export(self, model: torch.nn.Module) -> None:
        """Make the exported model self-describing: the generation budget its answers need."""
        model.generation_config.max_new_tokens = self.max_new_tokens()

    def logged_inputs(self) -> list[tuple[Dataset, str]]:
        """Datasets (beyond the question set) this run trains or evaluates on, with their MLflow context."""
        return []

    @classmethod
    def tokenizer_source(cls, cfg: ExperimentConfig) -> str | None:
        """Where the tokenizer comes from when it is not the model's own (KNIFE's student: the teacher's)."""
        return cfg.model.tokenizer

    def collate(self, features: list[Features]) -> Batch:
        return pad_batch(features, self.tokenizer.pad_token_id)

    def encode(self, text: str, max_length: int) -> list[int]:
        """Token ids ending in EOS, truncated to max_length (EOS kept)."""
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(ids) > max_length:
            ids = ids[: max_length - 1] + [self.tokenizer.eos_token_id]
        return ids

    def rationales(self, example: QAExample, rng: random.Random) -> list[str]:
        return select_rationales(example, self.cfg.data.rationale_source, rng)

    @abstractmethod
    def train_features(self, example: QAExample, rng: random.Random) -> list[Features]:
        """Zero or more training features for one example (zero: it lacks what the method needs)."""

    def feature_fingerprint(self) -> dict[str, Any]:
        """Everything `train_features` depends on besides the examples and the seed (trainer.data.feature_cache
        adds those): the method, the data settings that shape features, the tokenizer's identity and the code
        that builds them. A method whose features read more (KARD: its knowledge dataset) extends this dict.
        Conservative: the whole method section counts, so an unrelated knob (a loss weight) only costs a rebuild."""
        data = self.cfg.data
        code = [Path(inspect.getfile(c)) for c in type(self).__mro__ if c.__module__.startswith("trainer.")]
        return {
            "method": self.name,
            "method_config": self.cfg.method.model_dump(mode="json"),  # prompts, lengths, passages per example, ...
            "data": {field: getattr(data, field) for field in FEATURE_DATA_FIELDS if field in type(data).model_fields},
            "tokenizer": tokenizer_digest(self.tokenizer),
            "code": source_digest([*code, *DATA_PACKAGE.glob("*.py")]),
        }

    @abstractmethod
    def eval_features(self, example: QAExample) -> Features:
        """Encoder inputs for answering one dev example."""

    def loss(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """`loss` to optimise plus named parts to log; default: task cross-entropy on `labels`."""
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        task = token_cross_entropy(out.logits, batch["labels"])
        return {"loss": task, "task_loss": task.detach()}

    def max_new_tokens(self) -> int:
        return self.cfg.data.max_target_length

    # ---- evaluation hooks (trainer.evaluation.evaluator) ------------------------------------------
    def encoder_pass(self, model: torch.nn.Module, batch: Batch) -> tuple[BaseModelOutput, torch.Tensor]:
        """Encoder states for eval features, and the mask the decoder cross-attends through.

        Computed once per batch and shared by greedy decoding, choice scoring and sampling.
        """
        return encode(model, batch["input_ids"], batch["attention_mask"]), batch["attention_mask"]

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of a text piece without EOS; pieces concatenate as the whole target would tokenise."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def scoring_prefix(self, generated: str) -> str:
        """What the decoder writes before the answer; choices are scored after it. Answer-first methods: ""."""
        return ""

    def answer_terminator(self) -> list[int]:
        """Token ids that follow the answer in this method's target (EOS unless something comes after it)."""
        return [self.tokenizer.eos_token_id]

    def choice_continuations(self, example: QAExample) -> list[list[int]]:
        """Per choice, the ids choice scoring rates: the answer text as the target writes it, then the terminator."""
        return [self.encode_plain(format_choice(choice)) + self.answer_terminator() for choice in example.choices]

    def answer_text(self, generated: str) -> str | None:
        """The part of a generation that holds the answer; None when it never got to one."""
        return generated

    def parse(self, text: str, example: QAExample) -> int | None:
        """The choice a generation names, or None: only the method's answer part is read."""
        answer = self.answer_text(text)
        return None if answer is None else parse_choice(answer, example.choices)

    def check_eval_examples(self, examples: list[QAExample]) -> None:  # noqa: B027 - most methods need nothing
        """Refuse dev examples that lack what this method reads at evaluation (rather than evaluate something else)."""

    def eval_details(self, example: QAExample) -> dict[str, Any]:
        """Context worth keeping beside a dev prediction (e.g. the passages a KARD student read)."""
        return {}

    def setup(self, strategy: Any, model_config: PretrainedConfig) -> None:  # noqa: B027 - most need nothing
        """Load anything beyond the trained model (KNIFE's frozen teacher) once the process group exists."""

    def auxiliary_modules(self) -> dict[str, torch.nn.Module]:
        """Trainable modules the method adds beside the model, by name (after setup); the strategy trains and
        checkpoints them with the model and never exports them. Most methods have none."""
        return {}


def encoder_inputs(method: Method, source: str) -> Features:
    """The task input as encoder features (what generation needs)."""
    input_ids = method.encode(source, method.cfg.data.max_input_length)
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids)}


def simple_feature(method: Method, source: str, target: str, max_target: int) -> Features:
    """Encoder inputs plus a target sequence as labels."""
    return {**encoder_inputs(method, source), "labels": method.encode(target, max_target)}
