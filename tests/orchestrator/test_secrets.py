"""Credentials in URIs never leave the process."""

from __future__ import annotations

import pytest

from orchestrator.secrets import redact, redact_values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://AKIAEXAMPLE:wJal/rXUtnFEMI@bucket/key", "s3://***@bucket/key"),
        ("https://user:p%40ss@mlflow.example.com:5000", "https://***@mlflow.example.com:5000"),
        ("gs://b/x.parquet?X-Goog-Signature=abc123&X-Goog-Date=1", "gs://b/x.parquet?X-Goog-Signature=***&X-Goog-Date=1"),
        ("http://h/p?token=abc&user=me", "http://h/p?token=***&user=me"),
        ("see s3://a:b@c and http://x:y@z", "see s3://***@c and http://***@z"),
    ],
)
def test_credentials_in_uris_are_replaced(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", ["sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000", "/data/cifar", "s3://bucket/x",
                                  "digits", "loss.temperature=0.2"])
def test_text_without_credentials_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_nested_values_are_redacted() -> None:
    data = {"data": {"uri": "s3://k:s@b/x", "root": ["https://u:p@h"]}, "n": 3}
    assert redact_values(data) == {"data": {"uri": "s3://***@b/x", "root": ["https://***@h"]}, "n": 3}
