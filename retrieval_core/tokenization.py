"""The tokenization contract shared by the tantivy index, the Elasticsearch mapping and the baselines.

Contract (version 1), applied to ``title + "\\n" + text`` at index time and to the query at search time:

1. split on every character that is not Unicode Alphabetic and not Unicode Numeric (Nd, Nl, No);
2. drop tokens of 40 or more UTF-8 bytes;
3. lowercase each character on its own (no final-sigma rule).

This is tantivy's ``default`` analyzer (SimpleTokenizer, RemoveLongFilter(40), LowerCaser). The
Elasticsearch analyzer below expresses the same rules with a Java-regex pattern tokenizer; known
differences are listed in docs/retrieval_service.md. Query terms are kept with repeats, as Lucene's
``match`` query does, so a repeated word counts twice in both backends.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Any

import tantivy

CONTRACT_VERSION = 1
MAX_TOKEN_BYTES = 40
TANTIVY_TOKENIZER = "default"
ES_ANALYZER = "kard_text"
# Java regex: \p{IsAlphabetic} is Unicode Alphabetic and \p{N} is Nd|Nl|No, i.e. Rust's char::is_alphanumeric.
ES_TOKEN_PATTERN = r"[^\p{IsAlphabetic}\p{N}]+"


@lru_cache(maxsize=1)
def _analyzer() -> tantivy.TextAnalyzer:
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_BYTES))
        .filter(tantivy.Filter.lowercase())
        .build()
    )


def tokenize(text: str) -> list[str]:
    """Tokens exactly as the tantivy index sees them (same Rust code), used for queries and baselines."""
    return _analyzer().analyze(text)


def reference_tokenize(text: str) -> list[str]:
    """A pure-Python reading of the contract, independent of tantivy, for checks and docs.

    Python has no Unicode *Alphabetic* property, so letters (L*) and numbers (N*) stand in for it;
    this equals :func:`tokenize` on text without combining marks (e.g. Latin-script English).
    """
    tokens: list[str] = []
    current: list[str] = []
    for char in text + " ":
        if unicodedata.category(char)[0] in "LN":
            current.append(char)
        elif current:
            token = "".join(current)
            current = []
            if len(token.encode("utf-8")) < MAX_TOKEN_BYTES:
                tokens.append("".join(c.lower() for c in token))
    return tokens


def elasticsearch_analysis(token_pattern: str = ES_TOKEN_PATTERN) -> dict[str, Any]:
    """Index ``analysis`` settings implementing the contract in Elasticsearch.

    ``length`` max 39 counts UTF-16 units, tantivy counts UTF-8 bytes: identical for ASCII tokens.
    """
    return {
        "tokenizer": {"kard_split": {"type": "pattern", "pattern": token_pattern}},
        "filter": {"kard_max_len": {"type": "length", "min": 0, "max": MAX_TOKEN_BYTES - 1}},
        "analyzer": {
            ES_ANALYZER: {
                "type": "custom",
                "tokenizer": "kard_split",
                "filter": ["kard_max_len", "lowercase"],
            }
        },
    }
