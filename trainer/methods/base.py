"""What a training method implements: features, loss, the model it trains, and how it is evaluated.

`Method` is the part every method has; trainer.methods.seq2seq.Seq2SeqMethod adds what seq2seq students share
(encoding, answer formats, choice-scoring evaluation). A method's package registers its config section and
everything else the system asks about it in trainer.methods.registry.
"""

from __future__ import annotations

import inspect
import random
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from trainer.config.schema import ExperimentConfig
from trainer.data.collate import pad_batch
from trainer.data.example import QAExample
from trainer.data.feature_cache import source_digest, tokenizer_digest
from trainer.evaluation.evaluator import EvalSettings
from trainer.evaluation.protocols import Batch, Evaluation, Features
from trainer.strategy.protocols import DistributedContext, MethodSetupContext
from trainer.tracking.mlflow_tracker import SEQ2SEQ_PYFUNC, PyfuncSpec

if TYPE_CHECKING:
    from mlflow.data.dataset import Dataset

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
    """A training recipe, built by the loop on every rank from the config its registered section validated."""

    name: ClassVar[str]
    uses_rationales: ClassVar[bool] = False
    pyfunc: ClassVar[PyfuncSpec] = SEQ2SEQ_PYFUNC

    def __init__(self, cfg: ExperimentConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.progress = 0.0  # share of optimizer steps done; schedules inside objectives read it

    @classmethod
    def tokenizer_source(cls, cfg: ExperimentConfig) -> str | None:
        """Where the tokenizer comes from when it is not the model's own (KNIFE's student: the teacher's)."""
        return cfg.model.tokenizer

    def setup(self, strategy: MethodSetupContext, model_config: PretrainedConfig) -> None:  # noqa: B027 - most need nothing
        """Load anything beyond the trained model (KNIFE's frozen teacher) once the process group exists."""

    @abstractmethod
    def build_model(self, model_config: PretrainedConfig) -> torch.nn.Module:
        """The trained model, built inside the strategy's partitioned-init context."""

    def auxiliary_modules(self) -> dict[str, torch.nn.Module]:
        """Trainable modules the method adds beside the model, by name (after setup); the strategy trains and
        checkpoints them with the model and never exports them. Most methods have none."""
        return {}

    def prepare_export(self, model: torch.nn.Module) -> None:  # noqa: B027 - most need nothing
        """Make the exported model self-describing before it is saved."""

    def logged_inputs(self) -> list[tuple[Dataset, str]]:
        """Datasets (beyond the question set) this run trains or evaluates on, with their MLflow context."""
        return []

    # ---- training ------------------------------------------------------------------------------------
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

    def collate(self, features: list[Features]) -> Batch:
        return pad_batch(features, self.tokenizer.pad_token_id)

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """`loss` to optimise plus named parts to log."""

    # ---- evaluation ----------------------------------------------------------------------------------
    def prepare_evaluation(self, strategy: DistributedContext, examples: list[QAExample]) -> None:  # noqa: B027
        """Once, before the first dev evaluation: precompute what evaluation reads (KARD: the dev passages)."""

    @abstractmethod
    def evaluate(
        self,
        model: torch.nn.Module,
        examples: list[QAExample],
        strategy: DistributedContext,
        settings: EvalSettings,
        generation_kwargs: dict[str, Any],
    ) -> Evaluation:
        """Evaluate on dev; every rank calls it together and gets the whole evaluation back."""
