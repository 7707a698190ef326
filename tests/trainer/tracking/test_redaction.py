"""Secrets never reach MLflow: known secret values, URL passwords and secret-named keys are masked."""

from __future__ import annotations

import pytest

from trainer.tracking.redaction import REDACTED, is_secret_name, redact_mapping, redact_text


def test_secret_names() -> None:
    assert all(is_secret_name(n) for n in ("api_key", "hf_token", "es.password", "AWS_SECRET_ACCESS_KEY", "token"))
    assert not any(is_secret_name(n) for n in ("tokenizer", "model.tokenizer_vocab_size", "keyword", "max_k"))


def test_values_urls_and_keys_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_canary_123")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-canary-9")
    text = "token hf_canary_123 at https://bob:pw-canary-9@mlflow:5000/x and s3://b/p?secret_key=abc&region=eu"
    redacted = redact_text(text)
    assert "hf_canary_123" not in redacted and "pw-canary-9" not in redacted and "abc" not in redacted
    assert "https://bob:***@mlflow:5000/x" in redacted and "region=eu" in redacted
    params = redact_mapping({"retrieval.api_token": "zzz-plain", "model.tokenizer": "t5-small", "n": 3})
    assert params == {"retrieval.api_token": REDACTED, "model.tokenizer": "t5-small", "n": 3}
