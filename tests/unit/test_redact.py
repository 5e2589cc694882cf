"""Credentials in URLs are masked wherever a URL is shown or logged."""

from __future__ import annotations

import pytest

from app.redact import redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:PASS@gpu:30000", "http://***@gpu:30000"),
        ("redis://:PASS@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("https://PASS@ha.lan:8123/", "https://***@ha.lan:8123/"),
        ("http://s.lan/search?q=cats&token=PASS", "http://s.lan/search?q=cats&token=***"),
        ("http://m.lan/mcp?api_key=PASS&x=1", "http://m.lan/mcp?api_key=***&x=1"),
        ("http://m.lan/mcp?Signature=PASS#frag", "http://m.lan/mcp?Signature=***#frag"),
        ("http://plain.lan:8080/v1?q=1", "http://plain.lan:8080/v1?q=1"),
    ],
)
def test_a_url_is_shown_without_its_secrets(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # idempotent


def test_urls_inside_text_are_masked() -> None:
    text = "could not reach http://a:PASS@x:1/mcp?token=PASS2 (timeout); retry"
    masked = redact_text(text)
    assert "PASS" not in masked
    assert masked.startswith("could not reach http://***@x:1/mcp?token=***")
