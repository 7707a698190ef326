"""The one prompt contract: exact token budget, the question never cut, and training input == inference input."""

import random

import pytest

from trainer.config.loader import load_config, with_overrides
from trainer.data.example import DataError, QAExample
from trainer.data.formatting import format_question
from trainer.kard.knowledge import KnowledgeBase
from trainer.kard.prompt import KNOWLEDGE_CUE, Passage, build_prompt_ids
from trainer.methods.registry import method_class
from trainer.models.factory import build_model_config, build_tokenizer
from trainer.models.tokenizer import tokenizer_from_json, train_tokenizer_json

EXAMPLE = QAExample(id="q", question="Is bolbrax striped?", choices=("yes", "no"), answer_index=0)
LONG = Passage("p1", "Bolbrax", " ".join(["bolbrax is a plarzik that lives in the northern lands."] * 20))
SHORT = Passage("p2", "Plarzik", "every plarzik is striped.")


@pytest.fixture(scope="module")
def tokenizer():
    texts = [format_question(EXAMPLE), LONG.text, SHORT.text, "answer the question. knowledge: [1] [2]"]
    return tokenizer_from_json(train_tokenizer_json(texts, 200))


def plain(tokenizer):
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def test_question_is_kept_whole_and_passages_share_what_is_left(tokenizer) -> None:
    encode = plain(tokenizer)
    head = encode(f"answer the question. {format_question(EXAMPLE)}")
    ids = build_prompt_ids(encode, tokenizer.eos_token_id, "answer the question.", EXAMPLE, [LONG, SHORT], 60)
    assert len(ids) == 60 and ids[: len(head)] == head and ids[-1] == tokenizer.eos_token_id
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert KNOWLEDGE_CUE in text and "[2] plarzik. every plarzik is striped." in text  # the short one fits whole
    assert "[1] bolbrax." in text  # the long one is cut to what is left
    roomy = build_prompt_ids(encode, tokenizer.eos_token_id, "", EXAMPLE, [SHORT], 512)
    assert tokenizer.decode(roomy, skip_special_tokens=True).endswith("[1] plarzik. every plarzik is striped.")
    bare = build_prompt_ids(encode, tokenizer.eos_token_id, "", EXAMPLE, [], 512)
    assert KNOWLEDGE_CUE not in tokenizer.decode(bare, skip_special_tokens=True)


def test_a_question_that_cannot_fit_is_an_error_naming_the_setting(tokenizer) -> None:
    with pytest.raises(DataError, match="more than data.max_input_length=8"):
        build_prompt_ids(plain(tokenizer), tokenizer.eos_token_id, "", EXAMPLE, [SHORT], 8)


def test_training_input_equals_inference_input_for_the_same_passages(kard_knowledge) -> None:
    cfg, path = kard_knowledge
    cfg = with_overrides(cfg, "method.name=kard")
    knowledge = KnowledgeBase(path)
    from trainer.data.registry import load_splits

    train = load_splits(cfg.data, cfg.run.seed).train
    tokenizer = build_tokenizer(cfg.model, lambda: [ex.question for ex in train], broadcast=lambda x: x)
    method = method_class(cfg)(cfg, tokenizer)
    method.setup(None, build_model_config(cfg.model, tokenizer))
    example = train[0]
    [first, *_] = method.train_features(example, random.Random(0))
    passages = knowledge.lookup(knowledge.train_rows(example)[0].passage_ids)
    method.dev_passages[example.id] = passages  # what inference would read for this question
    assert method.eval_features(example)["input_ids"] == first["input_ids"]
    assert len(first["input_ids"]) <= cfg.data.max_input_length
    rd = method_class(load_config(overrides=["method.name=rd"]))(cfg, tokenizer)
    rd.setup(None, None)
    assert KNOWLEDGE_CUE not in tokenizer.decode(rd.train_features(example, random.Random(0))[0]["input_ids"])
