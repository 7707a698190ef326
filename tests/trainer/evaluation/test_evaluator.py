"""The shared dev evaluation on a real tiny T5 through a one-rank strategy: choice scoring is the accuracy,
greedy generation a second view, sampling a vote; each method scores its choices where its target puts them."""

import pytest
import torch

from trainer.config.loader import load_config
from trainer.data.example import DataError, QAExample
from trainer.data.formatting import tokenizer_corpus
from trainer.evaluation.choice_scoring import score_choices
from trainer.evaluation.evaluator import EvalSettings, evaluate
from trainer.methods.registry import method_class
from trainer.models.factory import build_model, build_model_config, build_tokenizer
from trainer.strategy.deepspeed_strategy import DeepSpeedStrategy

EXAMPLES = [
    QAExample(id="q1", question="Can a fish climb trees?", choices=("yes", "no"), answer_index=1,
              rationales=("Fish have no legs.",)),
    QAExample(id="q2", question="Which one swims?", choices=("a cat", "a fish", "a rock"), answer_index=1,
              rationales=("Fish swim in water.",)),
    QAExample(id="q3", question="Is ice cold?", choices=("yes", "no"), answer_index=0,
              rationales=("Ice is frozen water.",)),
]  # fmt: skip


def setup(name: str, *overrides: str):
    cfg = load_config(
        overrides=[f"method.name={name}", "model.tokenizer_vocab_size=200", "data.rationale_source=llm_first",
                   "run.num_workers=1", *overrides]
    )  # fmt: skip
    strategy = DeepSpeedStrategy(cfg)
    strategy.setup_distributed()
    tokenizer = build_tokenizer(cfg.model, lambda: tokenizer_corpus(EXAMPLES * 3), broadcast=lambda x: x)
    torch.manual_seed(0)
    model = build_model(cfg.model, build_model_config(cfg.model, tokenizer)).eval()
    return method_class(cfg)(cfg, tokenizer), model, strategy


@pytest.mark.parametrize("name", ["ft_io", "ft_ior", "multitask"])
def test_accuracy_is_the_argmax_of_choice_scores_after_an_empty_prefix(name: str) -> None:
    method, model, strategy = setup(name)
    result = evaluate(method, model, EXAMPLES, strategy, EvalSettings(batch_size=2), {})
    batch = method.collate([method.eval_features(ex) for ex in EXAMPLES])
    encoder_outputs, mask = method.encoder_pass(model, batch)
    direct = score_choices(
        model, encoder_outputs, mask, [[] for _ in EXAMPLES], [method.choice_continuations(ex) for ex in EXAMPLES]
    )
    for prediction, scores, best in zip(result.predictions, direct.mean_logprob, direct.best(), strict=True):
        assert prediction.choice_scores == pytest.approx(scores, abs=1e-5)
        assert prediction.predicted_index == best
    assert result.accuracy == sum(p.predicted_index == p.gold_index for p in result.predictions) / 3
    metrics = result.metrics()
    assert set(metrics) == {"dev/accuracy", "dev/generation_accuracy", "dev/unparsed_rate", "dev/num_examples"}
    greedy = model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=method.max_new_tokens()
    )
    assert [p.generated for p in result.predictions] == method.tokenizer.batch_decode(greedy, skip_special_tokens=True)


def test_ior_scores_the_answer_against_its_explanation_cue() -> None:
    method, _, _ = setup("ft_ior")
    [yes, _] = method.choice_continuations(EXAMPLES[0])
    assert yes == method.encode_plain("yes explanation:")
    assert method.parse("no explanation: yes it can", EXAMPLES[0]) == 1


def test_iro_scores_choices_after_the_generated_rationale_even_when_it_never_wrote_answer() -> None:
    method, model, strategy = setup("ft_iro", "data.max_rationale_length=8", "data.max_target_length=2")
    assert method.scoring_prefix("explanation: fish have no legs") == "explanation: fish have no legs answer:"
    assert method.scoring_prefix("explanation: the answer: is tricky answer: no") == (
        "explanation: the answer: is tricky answer:"
    )
    assert method.answer_text("explanation: the answer: yes, but answer: no") == " no"
    assert method.parse("explanation: fish have no legs", EXAMPLES[0]) is None  # never reached an answer
    assert method.parse("explanation: i do not know answer: unknown", EXAMPLES[0]) is None
    result = evaluate(method, model, EXAMPLES, strategy, EvalSettings(batch_size=3), {})
    batch = method.collate([method.eval_features(ex) for ex in EXAMPLES])
    encoder_outputs, mask = method.encoder_pass(model, batch)
    prefixes = [method.encode_plain(method.scoring_prefix(p.generated)) for p in result.predictions]
    direct = score_choices(model, encoder_outputs, mask, prefixes, [method.choice_continuations(e) for e in EXAMPLES])
    assert [p.choice_scores for p in result.predictions] == [pytest.approx(s, abs=1e-5) for s in direct.mean_logprob]
    unparsed = sum(p.generated_index is None for p in result.predictions) / 3
    assert result.metrics()["dev/unparsed_rate"] == unparsed


def test_votes_over_samples_and_the_training_rng_is_untouched() -> None:
    method, model, strategy = setup("ft_io", "run.eval_vote_samples=4")
    torch.manual_seed(7)
    before = torch.get_rng_state()
    settings = EvalSettings(batch_size=2, vote_samples=4, seed=3)
    first = evaluate(method, model, EXAMPLES, strategy, settings, {})
    assert torch.equal(torch.get_rng_state(), before)
    again = evaluate(method, model, EXAMPLES, strategy, settings, {})
    assert [p.samples for p in first.predictions] == [p.samples for p in again.predictions]  # seeded stream
    for p in first.predictions:
        assert len(p.samples) == 4 and len(p.sample_indices) == 4
        votes = [i for i in p.sample_indices if i is not None]
        if votes:
            assert p.vote_index in votes and votes.count(p.vote_index) == max(votes.count(i) for i in set(votes))
        else:
            assert p.vote_index is None
    assert "dev/vote_accuracy" in first.metrics()
    rows = first.table_rows()
    assert rows[0]["id"] == "q1" and isinstance(rows[0]["samples"], str) and "correct" in rows[0]


def test_knife_teacher_refuses_dev_examples_without_a_rationale() -> None:
    method, model, strategy = setup("knife_teacher")
    bare = QAExample(id="bare", question="Is ice cold?", choices=("yes", "no"), answer_index=0)
    with pytest.raises(DataError, match="1 of 2 dev examples have none"):
        evaluate(method, model, [EXAMPLES[0], bare], strategy, EvalSettings(), {})


def test_knife_teacher_scores_with_the_rationale_in_its_encoder() -> None:
    method, model, strategy = setup("knife_teacher")
    result = evaluate(method, model, EXAMPLES, strategy, EvalSettings(batch_size=2), {})
    assert len(result.predictions) == 3 and all(
        len(p.choice_scores) == len(e.choices) for p, e in zip(result.predictions, EXAMPLES, strict=True)
    )
    feature = method.eval_features(EXAMPLES[0])
    assert len(feature["teacher_input_ids"]) > len(feature["student_input_ids"])
