"""Auth off is for loopback only: `cascade serve/up` on a reachable address needs API keys,
or the operator's explicit `CASCADE_ALLOW_NO_AUTH=true` (logged as an error)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import structlog

from app.config import check_bind_auth, is_loopback_host, load_settings
from app.errors import ConfigError


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)
    check_bind_auth(load_settings(), host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "cascade.lan", ""])
def test_a_reachable_bind_without_keys_is_refused(host: str) -> None:
    assert not is_loopback_host(host)
    with pytest.raises(ConfigError, match="without API keys"):
        check_bind_auth(load_settings(), host)


def test_keys_or_an_explicit_override_allow_a_reachable_bind() -> None:
    check_bind_auth(load_settings(api_keys="k1"), "0.0.0.0")
    with structlog.testing.capture_logs() as logs:
        check_bind_auth(load_settings(allow_no_auth=True), "0.0.0.0")
    assert [e["event"] for e in logs] == ["auth_disabled_on_network"]
    assert logs[0]["log_level"] == "error"


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["serve", "--host", "0.0.0.0", "--port", "1"], {}),
        (["up"], {"CASCADE_HOST": "0.0.0.0", "CASCADE_PORT": "1"}),
    ],
)
def test_the_cli_refuses_to_start_unauthenticated_on_the_network(
    argv: list[str], env: dict[str, str]
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *argv],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "without API keys" in done.stderr
