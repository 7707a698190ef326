"""Each method's features and loss on a real tiny T5 (the KNIFE student through a one-rank DeepSpeedStrategy)."""

import random
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from trainer.config.loader import load_config
from trainer.data.example import QAExample
from trainer.data.formatting import tokenizer_corpus
from trainer.methods.registry import method_class, registered_methods
from trainer.models.factory import build_model, build_model_config, build_tokenizer
from trainer.objectives.task import token_cross_entropy
from trainer.strategy.deepspeed_strategy import DeepSpeedStrategy

EXAMPLE = QAExample(
    id="q",
    question="Can a fish climb trees?",
    choices=("yes", "no"),
    answer_index=1,
    rationales=("Fish have no legs.", "Fish live in water."),
    facts=("Fish swim.", "Trees are on land."),
)


def make(name: str, *overrides: str):
    cfg = load_config(overrides=[f"method.name={name}", "model.tokenizer_vocab_size=200", *overrides])
    tokenizer = build_tokenizer(cfg.model, lambda: tokenizer_corpus([EXAMPLE] * 4), broadcast=lambda x: x)
    return cfg, method_class(cfg)(cfg, tokenizer), tokenizer


def fresh_model(cfg, tokenizer):
    return build_model(cfg.model, build_model_config(cfg.model, tokenizer))


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode([i for i in ids if i >= 0], skip_special_tokens=True)


def test_every_configured_method_is_registered() -> None:
    """The built-ins, in the order comparisons list them (a test's own method may follow them)."""
    assert list(registered_methods())[:9] == [
        "ft_io", "ft_ior", "ft_iro", "multitask", "knife_teacher", "knife_student", "rd", "kard", "kard_reranker"
    ]  # fmt: skip


def test_io_targets_the_answer_text() -> None:
    _, method, tok = make("ft_io")
    [feature] = method.train_features(EXAMPLE, random.Random(0))
    assert decode(tok, feature["labels"]) == "no"
    assert decode(tok, feature["input_ids"]).startswith("question: can a fish climb trees?")


@pytest.mark.parametrize(("source", "count"), [("facts", 1), ("llm_first", 1), ("llm_random", 1), ("llm_all", 2)])
def test_rationale_sources(source: str, count: int) -> None:
    _, method, tok = make("ft_ior", f"data.rationale_source={source}")
    features = method.train_features(EXAMPLE, random.Random(0))
    assert len(features) == count
    if source == "facts":
        assert decode(tok, features[0]["labels"]) == "no explanation: fish swim. trees are on land."


def test_iro_puts_the_answer_after_the_rationale_and_parses_it() -> None:
    _, method, tok = make("ft_iro", "data.rationale_source=llm_first")
    [feature] = method.train_features(EXAMPLE, random.Random(0))
    target = decode(tok, feature["labels"])
    assert target == "explanation: fish have no legs. answer: no"
    assert method.parse(target, EXAMPLE) == 1


@pytest.mark.parametrize("name", ["ft_ior", "ft_iro"])
def test_a_long_rationale_never_cuts_off_the_answer(name: str) -> None:
    long_rationale = " ".join(["fish have no legs and live in water."] * 40)
    example = QAExample(
        id="l", question="Can a fish climb?", choices=("yes", "no"), answer_index=1, rationales=(long_rationale,)
    )
    _, method, tok = make(
        name, "data.rationale_source=llm_first", "data.max_rationale_length=16", "data.max_target_length=4"
    )
    [feature] = method.train_features(example, random.Random(0))
    target = decode(tok, feature["labels"])
    assert len(feature["labels"]) <= method.max_new_tokens()
    assert method.parse(target, example) == 1
    if name == "ft_iro":
        assert target.endswith("answer: no")


def test_examples_without_rationales_give_no_rationale_features() -> None:
    _, method, _ = make("ft_ior", "data.rationale_source=facts")
    bare = QAExample(id="b", question="?", choices=("a", "b"), answer_index=0)
    assert method.train_features(bare, random.Random(0)) == []


def test_multitask_features_and_weighted_loss() -> None:
    cfg, method, tok = make("multitask", "data.rationale_source=llm_all", "method.multitask_alpha=0.25")
    features = method.train_features(EXAMPLE, random.Random(0))
    assert len(features) == 2  # one (answer, rationale) pair per rationale
    assert [decode(tok, f["explain"]["labels"]) for f in features] == ["fish have no legs.", "fish live in water."]
    assert all(decode(tok, f["answer"]["labels"]) == "no" for f in features)
    batch = method.collate(features)
    assert batch["task_ids"].tolist() == [0, 0, 1, 1]
    assert decode(tok, batch["input_ids"][0].tolist()).startswith("[answer]")
    assert decode(tok, batch["input_ids"][2].tolist()).startswith("[explain]")
    model = fresh_model(cfg, tok)
    parts = method.loss(model, batch)
    torch.testing.assert_close(parts["loss"], parts["task_loss"] + parts["rationale_loss"])
    answer_only = {k: v[:2] for k, v in batch.items()}
    unweighted = token_cross_entropy(
        model(**{k: answer_only[k] for k in ("input_ids", "attention_mask", "labels")}).logits, answer_only["labels"]
    )
    torch.testing.assert_close(parts["task_loss"], 0.25 * unweighted)


def test_multitask_batches_hold_each_examples_answer_and_rationale_together() -> None:
    """Whatever the shuffle, a batch of B pairs is B answer rows then the same B examples' rationale rows."""
    examples = [
        QAExample(id=f"q{i}", question=f"Is thing {i} big?", choices=("yes", "no"), answer_index=i % 2,
                  rationales=(f"Thing {i} is {'small' if i % 2 else 'large'}.",))
        for i in range(37)
    ]  # fmt: skip
    cfg, method, tok = make("multitask", "data.rationale_source=llm_first")
    features = [f for ex in examples for f in method.train_features(ex, random.Random(0))]
    loader = DataLoader(features, batch_size=16, shuffle=True, collate_fn=method.collate,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    sizes = []
    for batch in loader:
        pairs = batch["task_ids"].shape[0] // 2
        sizes.append(pairs)
        assert batch["task_ids"].tolist() == [0] * pairs + [1] * pairs
        for row in range(pairs):
            question = decode(tok, batch["input_ids"][row].tolist()).removeprefix("[answer]")
            assert decode(tok, batch["input_ids"][pairs + row].tolist()).removeprefix("[explain]") == question
            thing = question.split("thing ")[1].split(" ")[0]
            assert decode(tok, batch["labels"][row].tolist()) == ("no" if int(thing) % 2 else "yes")
            assert decode(tok, batch["labels"][pairs + row].tolist()).startswith(f"thing {thing} is")
    assert sizes == [16, 16, 5]


def test_knife_teacher_reads_the_rationale_and_student_does_not(tmp_path: Path) -> None:
    cfg, teacher_method, tok = make("knife_teacher", "data.rationale_source=llm_first")
    [feature] = teacher_method.train_features(EXAMPLE, random.Random(0))
    batch = teacher_method.collate([feature])
    assert "fish have no legs" in decode(tok, batch["teacher_input_ids"][0].tolist())
    masked = batch["teacher_input_ids"][0][batch["teacher_cross_attention_mask"][0].bool()].tolist()
    assert "legs" not in decode(tok, masked)  # the decoder sees only the question
    teacher = fresh_model(cfg, tok)
    assert torch.isfinite(teacher_method.loss(teacher, batch)["loss"])
    eval_batch = teacher_method.collate([teacher_method.eval_features(EXAMPLE)])
    encoder_outputs, cross_mask = teacher_method.encoder_pass(teacher, eval_batch)
    assert torch.equal(cross_mask, eval_batch["teacher_cross_attention_mask"])
    assert encoder_outputs.last_hidden_state.shape[1] == eval_batch["teacher_input_ids"].shape[1]

    export = tmp_path / "teacher"
    teacher.save_pretrained(export)
    tok.save_pretrained(export)
    student_cfg, student_method, student_tok = make(
        "knife_student", f"method.knife.teacher={export}", "method.knife.teacher_zero_stage=0"
    )
    assert student_tok.get_vocab() == tok.get_vocab()  # the student takes the teacher's tokenizer

    strategy = DeepSpeedStrategy(student_cfg)
    strategy.setup_distributed()  # a one-rank gloo group; teacher_zero_stage=0 replicates the teacher
    student_config = build_model_config(student_cfg.model, student_tok)
    student_method.setup(strategy, student_config)
    student = build_model(student_cfg.model, student_config)
    parts = student_method.loss(
        student, student_method.collate(student_method.train_features(EXAMPLE, random.Random(0)))
    )
    assert parts["kd_in_loss"] > 0 and parts["kd_out_loss"] > 0
    torch.testing.assert_close(parts["loss"], parts["task_loss"] + parts["kd_in_loss"] + parts["kd_out_loss"])
    batch = student_method.collate(student_method.train_features(EXAMPLE, random.Random(0)))
    student_method.knife = student_method.knife.model_copy(update={"lambda_task": 0.5, "lambda_in": 2.0})
    weighted = student_method.loss(student, batch)
    torch.testing.assert_close(weighted["task_loss_weighted"], 0.5 * weighted["task_loss"])
    torch.testing.assert_close(weighted["kd_in_loss_weighted"], 2.0 * weighted["kd_in_loss"])
    torch.testing.assert_close(weighted["kd_out_loss_weighted"], weighted["kd_out_loss"])
    torch.testing.assert_close(
        weighted["loss"],
        weighted["task_loss_weighted"] + weighted["kd_in_loss_weighted"] + weighted["kd_out_loss_weighted"],
    )
    parts["loss"].backward()
    assert all(p.grad is None for p in student_method.teacher.parameters())
    assert student.encoder.block[0].layer[0].SelfAttention.q.weight.grad is not None


def test_knife_student_rejects_a_teacher_of_another_width(tmp_path: Path) -> None:
    cfg, _, tok = make("knife_teacher")
    teacher = fresh_model(load_config(overrides=["model.name=t5-mini"]), tok)
    teacher.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    student_cfg, method, student_tok = make("knife_student", f"method.knife.teacher={tmp_path}")
    with pytest.raises(ValueError, match="teacher d_model 128 != student d_model 64"):
        method.setup(None, build_model_config(student_cfg.model, student_tok))


def test_knife_student_needs_a_teacher() -> None:
    cfg = load_config(overrides=["method.name=knife_student"])
    with pytest.raises(ValueError, match="method.knife.teacher"):
        method_class(cfg).tokenizer_source(cfg)
