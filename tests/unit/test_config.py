from __future__ import annotations

import pytest

from app.config import load_settings
from app.errors import ConfigError


def test_defaults_match_the_documented_ones() -> None:
    settings = load_settings(runtime_url="http://127.0.0.1:30000")
    assert settings.runtime_base == "http://127.0.0.1:30000"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert (settings.temperature, settings.top_p, settings.top_k) == (0.7, 0.95, 20)
    assert settings.repetition_penalty == 1.1
    assert settings.auth_enabled is False
    assert settings.redis_url is None


def test_env_vars_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCADE_RUNTIME_URL", "http://gpu:31000/")
    monkeypatch.setenv("CASCADE_API_KEYS", " alpha, beta ,,")
    monkeypatch.setenv("CASCADE_REDIS_URL", "redis://127.0.0.1:6390/2")
    monkeypatch.setenv("CASCADE_PORT", "9000")
    settings = load_settings()
    assert settings.runtime_base == "http://gpu:31000"
    assert [k.get_secret_value() for k in settings.api_keys] == ["alpha", "beta"]
    assert settings.auth_enabled
    assert len(settings.api_key_digests) == 2
    assert all(owner.startswith("key_") for owner in settings.api_key_digests.values())
    assert settings.redis_url == "redis://127.0.0.1:6390/2"
    assert settings.port == 9000


def test_invalid_values_name_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCADE_PORT", "99999")
    monkeypatch.setenv("CASCADE_REDIS_URL", "http://not-redis")
    monkeypatch.setenv("CASCADE_RUNTIME_API_KEY", "s3cret-value")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = info.value.message
    assert "CASCADE_PORT" in message
    assert "CASCADE_REDIS_URL" in message
    assert "s3cret-value" not in message


def test_budget_default_may_not_exceed_max(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCADE_THINKING_BUDGET_DEFAULT", "5000")
    monkeypatch.setenv("CASCADE_THINKING_BUDGET_MAX", "4000")
    with pytest.raises(ConfigError, match="THINKING_BUDGET"):
        load_settings()


def test_secrets_are_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCADE_API_KEYS", "topsecretkey")
    monkeypatch.setenv("CASCADE_RUNTIME_API_KEY", "runtimesecret")
    settings = load_settings()
    text = repr(settings) + str(settings.model_dump())
    assert "topsecretkey" not in text
    assert "runtimesecret" not in text


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CASCADE_SESSION_TTL_DAYS", "-1"),
        ("CASCADE_IMAGE_MAX_PIXELS", "lots"),
        ("CASCADE_TOOL_TIMEOUT", "0"),
    ],
)
def test_serve_refuses_any_bad_setting_with_its_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str
) -> None:
    from app.cli.main import main

    monkeypatch.setenv(variable, value)
    assert main(["serve"]) == 2
    assert variable in capsys.readouterr().err


def test_every_setting_is_in_the_readme_table() -> None:
    from pathlib import Path

    from app.config import Settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [
        f"CASCADE_{name.upper()}"
        for name in Settings.model_fields
        if f"`CASCADE_{name.upper()}" not in readme
    ]
    assert missing == []
