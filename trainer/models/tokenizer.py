"""An offline tokenizer for the tiny presets: no hub is reachable, so one is trained on the run's own text."""

from __future__ import annotations

import string
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# T5's special-token layout: pad=0 (also the decoder start), eos=1, unk=2.
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def train_tokenizer_json(texts: Iterable[str], vocab_size: int) -> str:
    """Train a lower-cased BPE with sentencepiece-style spaces; returns its JSON (portable across ranks)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=list(string.ascii_lowercase + string.digits + string.punctuation),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    return tokenizer.to_str()


def tokenizer_from_json(tokenizer_json: str) -> PreTrainedTokenizerFast:
    """Wrap a trained tokenizer so it saves, loads and pads like any HF tokenizer."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json),
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=4096,
    )
