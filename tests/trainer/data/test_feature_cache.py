"""The tokenised-feature cache: same features as building in memory, hit on reuse, invalidated by what shapes them."""

import json
import random
import shutil
from pathlib import Path

import pytest

from trainer.config.loader import load_config, with_overrides
from trainer.data.feature_cache import load_or_build
from trainer.data.formatting import tokenizer_corpus
from trainer.data.registry import load_splits
from trainer.loop import build_features
from trainer.methods.registry import method_class
from trainer.models.factory import build_tokenizer


def setup(tmp_path: Path, *overrides: str, vocab: int = 300):
    cfg = load_config(
        overrides=[
            "data.dataset=synthetic",
            "data.max_train_examples=60",
            "data.max_input_length=48",
            "data.max_rationale_length=32",
            "data.max_target_length=6",
            f"model.tokenizer_vocab_size={vocab}",
            f"data.feature_cache_dir={tmp_path / 'cache'}",
            *overrides,
        ]
    )
    examples = load_splits(cfg.data, cfg.run.seed).train
    tokenizer = build_tokenizer(cfg.model, lambda: tokenizer_corpus(examples), broadcast=lambda x: x)
    return cfg, method_class(cfg)(cfg, tokenizer), examples


def in_memory(method, examples, seed: int) -> list[dict]:
    """What the loop built before the cache existed: one generator over the examples in order."""
    rng = random.Random(seed)
    return [feature for example in examples for feature in method.train_features(example, rng)]


@pytest.mark.parametrize("method", ["ft_io", "knife_teacher", "multitask"])
def test_cached_features_equal_in_memory_ones_including_random_rationale_choice(tmp_path: Path, method: str) -> None:
    cfg, built, examples = setup(tmp_path, f"method.name={method}", "data.rationale_source=llm_random")
    first = build_features(built, examples, cfg)
    assert first.built and first.dataset.to_list() == in_memory(built, examples, cfg.run.seed)
    cfg, loaded, examples = setup(tmp_path, f"method.name={method}", "data.rationale_source=llm_random")
    second = build_features(loaded, examples, cfg)
    assert not second.built and second.path == first.path and second.digest == first.digest
    assert second.dataset.to_list() == in_memory(loaded, examples, cfg.run.seed)


def test_seed_is_part_of_the_key_only_when_features_draw_on_it(tmp_path: Path) -> None:
    cfg, method, examples = setup(tmp_path, "method.name=ft_ior", "data.rationale_source=llm_random")
    seed0 = build_features(method, examples, cfg)
    seed1 = build_features(method, examples, cfg.model_copy(update={"run": cfg.run.model_copy(update={"seed": 1})}))
    assert seed1.built and seed1.path != seed0.path and seed0.path.name == "seed-42.arrow"
    assert seed1.dataset.to_list() == in_memory(method, examples, 1) != seed0.dataset.to_list()

    cfg, method, examples = setup(tmp_path, "method.name=ft_io")  # never draws: one build serves every seed
    seed0 = build_features(method, examples, cfg)
    seed1 = build_features(method, examples, cfg.model_copy(update={"run": cfg.run.model_copy(update={"seed": 1})}))
    assert not seed1.built and seed1.path == seed0.path and seed0.path.name == "features.arrow"


@pytest.mark.parametrize(
    "change",
    [
        {"overrides": ("data.max_input_length=40",)},  # lengths
        {"overrides": ("data.max_train_examples=50",)},  # the data
        {"overrides": ("data.rationale_source=llm_first",)},  # which rationale
        {"vocab": 320},  # the tokenizer
    ],
)
def test_changing_what_shapes_features_misses_the_cache(tmp_path: Path, change: dict) -> None:
    base = ("method.name=ft_ior", "data.rationale_source=llm_all")
    cfg, method, examples = setup(tmp_path, *base)
    original = build_features(method, examples, cfg)
    cfg, method, examples = setup(tmp_path, *base, *change.get("overrides", ()), vocab=change.get("vocab", 300))
    changed = build_features(method, examples, cfg)
    assert changed.built and changed.path.parent != original.path.parent
    assert changed.dataset.to_list() == in_memory(method, examples, cfg.run.seed)


def test_changed_example_text_misses_the_cache(tmp_path: Path) -> None:
    cfg, method, examples = setup(tmp_path)
    build_features(method, examples, cfg)
    edited = [examples[0].__class__(**{**examples[0].__dict__, "question": "edited?"}), *examples[1:]]
    assert build_features(method, edited, cfg).built


def test_a_build_without_features_caches_nothing(tmp_path: Path) -> None:
    _, method, examples = setup(tmp_path)
    empty = load_or_build(tmp_path / "cache", {"k": 1}, examples, lambda example, rng: [], seed=0)
    assert len(empty) == 0 and not list((tmp_path / "cache").glob("*/*.arrow"))


def test_kard_features_are_keyed_by_the_knowledge_dataset_version(kard_knowledge, tmp_path: Path) -> None:
    """KARD's training features read passages from its knowledge dataset: a rebuilt dataset (same path, new
    manifest) must not reuse features built from the old one."""
    cfg, knowledge_path = kard_knowledge
    cfg = with_overrides(cfg, "method.name=kard", f"data.feature_cache_dir={tmp_path / 'cache'}")
    examples = load_splits(cfg.data, cfg.run.seed).train
    tokenizer = build_tokenizer(cfg.model, lambda: tokenizer_corpus(examples), broadcast=lambda x: x)

    def kard_features(copy: Path):
        method = method_class(cfg)(cfg.model_copy(update={"method": cfg.method.model_copy(
            update={"kard": cfg.method.kard.model_copy(update={"knowledge": str(copy)})})}), tokenizer)  # fmt: skip
        method.setup(None, None)
        return build_features(method, examples, cfg), method

    copy = tmp_path / "knowledge"
    shutil.copytree(knowledge_path, copy)
    first, method = kard_features(copy)
    assert first.built and first.dataset.to_list() == in_memory(method, examples, cfg.run.seed)
    assert not kard_features(copy)[0].built
    manifest = copy / "knowledge.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "created": 0.0}))  # rebuilt in place
    assert kard_features(copy)[0].built
