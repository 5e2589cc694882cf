"""Launch profiles per SGLang version: the pinned version is stated, older versions are adapted
(no `--default-chat-template-kwargs` before 0.5.23) or refused, with the reason."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from app.cli.main import main
from app.config import load_settings
from app.runtime.body import build_chat_body
from app.runtime.launch import (
    PINNED_SGLANG_VERSION,
    build_launch_command,
    parse_version,
    version_notes,
)
from app.runtime.models import RuntimeRequest

REPO = Path(__file__).resolve().parents[2]


def test_pinned_version_is_the_one_the_makefile_pyproject_and_compose_use() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^SGLANG_VERSION := (\S+)$", makefile, re.M)[1] == PINNED_SGLANG_VERSION  # type: ignore[index]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["runtime"] == [f"sglang=={PINNED_SGLANG_VERSION}"]
    assert f"lmsysorg/sglang:v{PINNED_SGLANG_VERSION}" in (REPO / "compose.yaml").read_text()


def test_print_states_the_pinned_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runtime", "--print"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# SGLang 0.5.23 (cascade pins 0.5.23), profile h100-fp8"
    assert len(lines) == 2
    assert "--default-chat-template-kwargs" in shlex.split(lines[1])


def test_print_for_0_5_15_drops_the_template_kwargs_flag_and_says_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["runtime", "--print", "--sglang-version", "0.5.15"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# SGLang 0.5.15 (cascade pins 0.5.23)")
    assert any("--default-chat-template-kwargs left out" in line for line in lines[1:-1])
    argv = shlex.split(lines[-1])
    assert "--default-chat-template-kwargs" not in argv
    assert "--enable-strict-thinking" in argv


def test_the_adapted_command_is_safe_because_cascade_always_sends_enable_thinking() -> None:
    body = build_chat_body(
        RuntimeRequest(messages=[{"role": "user", "content": "hi"}]),
        load_settings(),
        model="m",
        rid="r",
        stream=False,
    )
    assert body["chat_template_kwargs"]["enable_thinking"] is False


def test_a_version_older_than_any_cascade_ran_against_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["runtime", "--print", "--sglang-version", "0.4.9"]) == 2
    err = capsys.readouterr().err
    assert "older than 0.5.15" in err and "0.5.23" in err


def test_a_newer_version_gets_the_pinned_flags_with_a_note() -> None:
    assert build_launch_command("h200-fp8", sglang_version="0.6.0") == build_launch_command(
        "h200-fp8"
    )
    assert any("newer than the pinned" in note for note in version_notes("0.6.0"))
    assert version_notes(PINNED_SGLANG_VERSION) == []


def test_versions_parse_with_suffixes_and_reject_nonsense(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert parse_version("0.5.23.post1") == (0, 5, 23)
    assert parse_version("v0.5.15") == (0, 5, 15)
    assert parse_version("0.5.22") < parse_version("0.5.23")
    assert main(["runtime", "--print", "--sglang-version", "latest"]) == 2
    assert "not an SGLang version" in capsys.readouterr().err


def test_make_live_runs_the_doctor_then_the_live_script_and_make_test_does_not() -> None:
    makefile = (REPO / "Makefile").read_text()
    live = re.search(r"^live:.*?\n((?:\t.*\n)+)", makefile, re.M)
    assert live is not None
    recipe = live.group(1)
    assert "CASCADE_LIVE_RUNTIME_URL" in recipe and "exit 2" in recipe
    assert recipe.index("-m app.cli doctor") < recipe.index("-m tests.live")
    test_rule = re.search(r"^test:(.*)\n((?:\t.*\n)+)", makefile, re.M)
    assert test_rule is not None
    assert "live" not in test_rule.group(1) and "tests.live" not in test_rule.group(2)
