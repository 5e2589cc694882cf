"""cascade's SGLang launch command, read by SGLang 0.5.23's own argument parser.

`python -m sglang.launch_server ARGS` hands ARGS to `prepare_server_args`: an argparse parser
built by `ServerArgs.add_cli_args`, then `ServerArgs.from_cli_args`. The same two steps run here
for every hardware profile (without `prepare_server_args` itself, which reconfigures the root
logger). Resolution (`ServerArgs.resolve_once`) is not run: it reads the checkpoint's config.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from app.runtime.launch import PROFILES, SERVED_MODEL_NAME, build_launch_command
from tests.contract import reference
from tests.sglang_sim.script import SimConfig

pytestmark = pytest.mark.contract

EXPECTED_PROFILES = ["h100-bf16", "h100-fp8", "h200-bf16", "h200-fp8", "gb10-nvfp4"]
API_KEY = "contract-test-key"


def _server_args(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    """SGLang's ServerArgs for the arguments after `-m sglang.launch_server`."""
    server_args_module = reference._mod("sglang.srt.server_args")
    at = argv.index("-m")
    assert argv[at + 1] == "sglang.launch_server"
    # `--api-key ${VAR}` is left for the shell to expand; give it a value as the shell would.
    args = [API_KEY if arg.startswith("${") else arg for arg in argv[at + 2 :]]
    parser = argparse.ArgumentParser(prog="sglang serve")
    server_args_module.ServerArgs.add_cli_args(parser)
    try:
        namespace = parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"SGLang's argument parser rejected the command: {capsys.readouterr().err}")
    return server_args_module.ServerArgs.from_cli_args(namespace)


def test_every_hardware_profile_is_defined() -> None:
    assert sorted(PROFILES) == sorted(EXPECTED_PROFILES)


@pytest.mark.parametrize("profile", EXPECTED_PROFILES)
def test_launch_command_is_accepted_by_sglang(
    profile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = PROFILES[profile]
    args = _server_args(build_launch_command(profile), capsys)
    assert args.model_path == spec.model_path
    assert args.served_model_name == SERVED_MODEL_NAME
    assert (args.reasoning_parser, args.tool_call_parser) == ("qwen3", "qwen3_coder")
    assert args.speculative_algorithm == "NEXTN"
    assert (
        args.speculative_num_steps,
        args.speculative_eagle_topk,
        args.speculative_num_draft_tokens,
    ) == (3, 1, 4)
    assert args.enable_strict_thinking is True
    assert args.default_chat_template_kwargs == {"enable_thinking": False}
    assert (args.mamba_radix_cache_strategy, args.page_size) == ("extra_buffer", 64)
    assert args.context_length == spec.context_length
    assert args.mem_fraction_static == spec.mem_fraction_static
    assert args.quantization == spec.quantization
    assert args.enable_metrics is True
    assert args.enable_cache_report is True
    assert args.enable_priority_scheduling is True
    assert args.api_key == API_KEY


def test_without_api_key_env_no_key_is_passed(capsys: pytest.CaptureFixture[str]) -> None:
    args = _server_args(build_launch_command("h200-fp8", api_key_env=None), capsys)
    assert args.api_key is None


def test_simulator_defaults_mirror_the_launch_command(capsys: pytest.CaptureFixture[str]) -> None:
    """The simulator stands in for this runtime: its launch-time settings must be the same."""
    args = _server_args(build_launch_command("h200-bf16"), capsys)
    sim = SimConfig()
    assert sim.model_name == args.served_model_name
    assert sim.model_path == args.model_path
    assert sim.default_template_kwargs == args.default_chat_template_kwargs
    assert sim.enable_cache_report is args.enable_cache_report
    assert (sim.reasoning_parser, sim.tool_call_parser) == (
        args.reasoning_parser,
        args.tool_call_parser,
    )
    assert sim.enable_strict_thinking is args.enable_strict_thinking
    assert sim.enable_priority_scheduling is args.enable_priority_scheduling
    assert sim.speculative_algorithm == args.speculative_algorithm


def test_simulator_server_info_uses_sglang_field_names() -> None:
    """`/server_info` is `ServerArgs.resolved_dict()` plus a few live fields
    (utils/common.py `build_server_info`, http_server.py `server_info`): the simulator's launch
    settings must carry ServerArgs' own field names, which is what `cascade doctor` reads."""
    from tests.sglang_sim.server import Simulator

    server_args_module = reference._mod("sglang.srt.server_args")
    fields = {
        field.name for field in server_args_module.record_fields(server_args_module.ServerArgs)
    }
    live = {"startup_time", "internal_states", "version", "frontend"}
    info = Simulator()._server_info()
    assert set(info) - live <= fields


def test_the_command_adapted_for_0_5_15_still_parses_and_leaves_template_kwargs_unset(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = _server_args(build_launch_command("h200-fp8", sglang_version="0.5.15"), capsys)
    assert args.default_chat_template_kwargs is None
    assert args.enable_strict_thinking is True
    assert (args.reasoning_parser, args.tool_call_parser) == ("qwen3", "qwen3_coder")


def test_launch_refuses_when_the_installed_sglang_is_another_version() -> None:
    """`cascade runtime` checks the installed SGLang (here the contract suite's 0.5.23) against
    the version the command was written for, before starting anything."""
    from app.cli.runtime import preflight

    problem = preflight("0.5.15")
    assert problem is not None
    assert "SGLang 0.5.23 is installed but the command is for 0.5.15" in problem
    assert "--sglang-version 0.5.23" in problem
