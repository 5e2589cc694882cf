from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from app.cli.main import main
from app.runtime.launch import PROFILES, build_launch_command


def test_help_lists_the_subcommands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("serve", "worker", "up", "runtime"):
        assert command in out


def test_runtime_print_has_the_flags_this_model_needs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runtime", "--print", "--profile", "h100-fp8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("# SGLang 0.5.23")
    argv = shlex.split(lines[-1])
    assert argv[:3] == ["python3", "-m", "sglang.launch_server"]

    def value(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert value("--reasoning-parser") == "qwen3"
    assert value("--tool-call-parser") == "qwen3_coder"
    assert value("--speculative-algorithm") == "NEXTN"
    assert value("--mamba-radix-cache-strategy") == "extra_buffer"
    assert value("--page-size") == "64"
    assert value("--default-chat-template-kwargs") == '{"enable_thinking":false}'
    assert value("--quantization") == "fp8"
    for flag in ("--enable-strict-thinking", "--enable-metrics", "--enable-cache-report"):
        assert flag in argv
    # The key is referenced, never printed.
    assert value("--api-key") == "${CASCADE_RUNTIME_API_KEY}"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_builds(profile: str) -> None:
    argv = build_launch_command(profile)
    assert "--model-path" in argv
    if profile.startswith("gb10"):
        assert argv[argv.index("--model-path") + 1].endswith("NVFP4-MTP")
    if profile.endswith("fp8"):
        assert argv[argv.index("--quantization") + 1] == "fp8"
    else:
        assert "--quantization" not in argv


def test_unknown_profile_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runtime", "--print", "--profile", "a100"]) == 2
    err = capsys.readouterr().err
    assert "unknown profile" in err and "h100-fp8" in err


def test_bad_configuration_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CASCADE_PORT", "not-a-port")
    assert main(["serve"]) == 2
    assert "CASCADE_PORT" in capsys.readouterr().err


def test_runtime_launch_refuses_without_sglang_or_gpu(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # No GPU on test machines: the launcher must say why instead of crashing or hanging.
    assert main(["runtime", "--profile", "h100-fp8", "--ready-timeout", "1"]) == 2
    assert "cascade runtime:" in capsys.readouterr().err


def test_api_key_substitution() -> None:
    from app.cli.runtime import resolve_api_key

    argv = ["x", "--api-key", "${K}", "--port", "1"]
    assert resolve_api_key(argv, {"K": "v"}) == ["x", "--api-key", "v", "--port", "1"]
    assert resolve_api_key(argv, {}) == ["x", "--port", "1"]
