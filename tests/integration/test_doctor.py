"""`cascade doctor` against the simulator: all PASS on the default one, and each way the simulator
can be configured to fail giving that check's FAIL or WARN with its fix, the other checks still
passing. Also Redis without AOF, an unreachable runtime, tool backends, and the exit status of
`python -m app.cli doctor --json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from app.cli.doctor import (
    BUDGET_PROMPT,
    TOOL_NAME,
    TOOL_PROMPT,
    Check,
    exit_code,
    run_doctor,
)
from app.config import load_settings
from app.media.config import MediaSettings
from tests.redis_server import RedisServer, free_port
from tests.sglang_sim.script import Rule, SimConfig
from tests.sglang_sim.testing import SimHandle, running_simulator
from tests.tool_servers import HomeAssistantServer, SearxngServer
from tools.config import load_tool_settings

REPO = Path(__file__).resolve().parents[2]

# What a model asked to reason at length emits (the default script reasons for 13 tokens only),
# and the call a named tool_choice forces; the simulator's model says what its rules script.
MODEL_RULES = [
    Rule(
        match=BUDGET_PROMPT[:40],
        output="One, two, three, four, five, six, and so on. " * 20 + "</think>\n\ndone",
    ),
    Rule(
        match=TOOL_PROMPT[:30],
        output=f"<tool_call>\n<function={TOOL_NAME}>\n<parameter=note>\nping\n</parameter>\n"
        "</function>\n</tool_call>",
    ),
]

ALL_RUNTIME_CHECKS = [
    "runtime-reachable",
    "runtime-version",
    "reasoning-parser",
    "tool-parser",
    "strict-thinking",
    "cache-report",
    "priority-scheduling",
    "speculative-decoding",
    "context-length",
    "thinking-default",
    "thinking-budget",
    "tool-choice",
    "prefix-reuse",
    "image",
]


@contextmanager
def simulator(**config: Any) -> Iterator[SimHandle]:
    with running_simulator(SimConfig(**config), rules=MODEL_RULES) as handle:
        yield handle


async def doctor(sim: SimHandle | None, redis_url: str | None, **tools: Any) -> list[Check]:
    url = sim.url if sim is not None else f"http://127.0.0.1:{free_port()}"
    settings = load_settings(runtime_url=url, redis_url=redis_url, runtime_max_retries=0)
    return await run_doctor(
        settings, load_tool_settings(**tools), MediaSettings.load(), call_timeout=20
    )


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.check: c for c in checks}


async def test_all_checks_pass_on_the_default_simulator_with_an_aof_redis(
    own_redis_server: RedisServer,
) -> None:
    with simulator() as sim:
        checks = await doctor(sim, own_redis_server.url)
        rids = [record.body.get("rid") for record in sim.sim.requests]
    names = [c.check for c in checks]
    assert names == [*ALL_RUNTIME_CHECKS, "redis", "redis-persistence", "redis-latency"]
    assert [c for c in checks if c.status != "PASS"] == []
    assert exit_code(checks) == 0
    found = by_name(checks)
    assert found["thinking-budget"].detail == "budget 16 → reasoning_tokens 17"
    assert "accept length 2.50" in found["speculative-decoding"].detail
    # A handful of tiny requests, each with its own rid, and nothing written to Redis.
    assert 0 < len(rids) <= 10
    assert len(set(rids)) == len(rids)
    assert all(isinstance(rid, str) and "-doctor-" in rid for rid in rids)
    assert all((record.body.get("max_completion_tokens") or 0) <= 64 for record in sim.sim.requests)
    client = redis.Redis.from_url(own_redis_server.url)
    try:
        assert client.dbsize() == 0
    finally:
        client.close()


FAILURES = [
    pytest.param(
        {"reasoning_parser": "deepseek-r1"},
        {"reasoning-parser": ("FAIL", "--reasoning-parser qwen3")},
        id="wrong-reasoning-parser",
    ),
    pytest.param(
        {"tool_call_parser": "hermes"},
        {"tool-parser": ("FAIL", "--tool-call-parser qwen3_coder")},
        id="wrong-tool-parser",
    ),
    pytest.param(
        {"ignore_thinking_budget": True},
        {"thinking-budget": ("WARN", "--enable-strict-thinking")},
        id="budget-ignored",
    ),
    pytest.param(
        {"enable_cache_report": False},
        {
            "cache-report": ("WARN", "--enable-cache-report"),
            "prefix-reuse": ("WARN", "--enable-cache-report"),
        },
        id="cache-report-off",
    ),
    pytest.param(
        {"default_template_kwargs": {}},
        {"thinking-default": ("WARN", "--default-chat-template-kwargs")},
        id="thinking-on-by-default",
    ),
    pytest.param(
        {"reject_images": True},
        {"image": ("FAIL", "Qwen3.6-27B-VLM-Cascade")},
        id="image-rejected",
    ),
    pytest.param(
        {"enable_strict_thinking": False},
        {"strict-thinking": ("WARN", "--enable-strict-thinking")},
        id="strict-thinking-off",
    ),
    pytest.param(
        {"enable_priority_scheduling": False},
        {"priority-scheduling": ("WARN", "--enable-priority-scheduling")},
        id="priority-scheduling-off",
    ),
    pytest.param(
        {"speculative_algorithm": None},
        {"speculative-decoding": ("WARN", "--speculative-algorithm NEXTN")},
        id="speculative-decoding-off",
    ),
    pytest.param(
        {"version": "0.5.15"},
        {"runtime-version": ("WARN", "--sglang-version 0.5.15")},
        id="other-sglang-version",
    ),
    pytest.param(
        {"context_length": 8192},
        {"context-length": ("WARN", "--context-length")},
        id="small-context",
    ),
]


@pytest.mark.parametrize(("config", "expected"), FAILURES)
async def test_each_misconfiguration_gives_its_check_a_fail_or_warn_with_the_fix(
    config: dict[str, Any], expected: dict[str, tuple[str, str]]
) -> None:
    with simulator(**config) as sim:
        checks = await doctor(sim, None)
    found = by_name(checks)
    assert [c.check for c in checks] == ALL_RUNTIME_CHECKS
    for name, (status, fix) in expected.items():
        assert found[name].status == status, found[name]
        assert fix in found[name].fix, found[name]
    others = [c for c in checks if c.check not in expected and c.status != "PASS"]
    assert others == []
    assert exit_code(checks) == (1 if any(s == "FAIL" for s, _ in expected.values()) else 0)


async def test_budget_ignored_says_cascades_guard_will_cut_reasoning() -> None:
    with simulator(ignore_thinking_budget=True) as sim:
        check = by_name(await doctor(sim, None))["thinking-budget"]
    assert "budgets not enforced by the runtime; cascade's guard will cut reasoning" in check.detail


async def test_redis_without_aof_is_a_warning_with_the_fix(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", aof=False)
    server.start()
    try:
        with simulator() as sim:
            checks = by_name(await doctor(sim, server.url))
    finally:
        server.stop()
    persistence = checks["redis-persistence"]
    assert persistence.status == "WARN"
    assert "appendonly no" in persistence.detail
    assert "appendonly yes" in persistence.fix
    assert checks["redis"].status == "PASS"


async def test_unreachable_runtime_and_redis_fail() -> None:
    checks = await doctor(None, f"redis://127.0.0.1:{free_port()}/0")
    assert [(c.check, c.status) for c in checks] == [
        ("runtime-reachable", "FAIL"),
        ("redis", "FAIL"),
    ]
    assert "CASCADE_RUNTIME_URL" in checks[0].fix
    assert exit_code(checks) == 1


async def test_tool_backends_reachable_pass_and_unreachable_warn() -> None:
    mcp_servers = [
        {"name": "local", "command": sys.executable, "args": ["-V"]},
        {"name": "missing", "command": "no-such-mcp-command-here"},
        {"name": "gone", "url": f"http://127.0.0.1:{free_port()}/mcp"},
    ]
    with SearxngServer() as searxng, HomeAssistantServer("right-token") as ha:
        with simulator() as sim:
            good = by_name(
                await doctor(
                    sim,
                    None,
                    searxng_url=searxng.url,
                    home_assistant_url=ha.url,
                    home_assistant_token="right-token",
                    mcp_servers=mcp_servers,
                )
            )
            bad_token = by_name(
                await doctor(
                    sim, None, home_assistant_url=ha.url, home_assistant_token="wrong-token"
                )
            )
        assert ha.requests and ha.requests[0].path == "/api/"
    assert good["searxng"].status == "PASS"
    assert good["home-assistant"].status == "PASS"
    assert good["mcp:local"].status == "PASS"
    assert (good["mcp:missing"].status, good["mcp:gone"].status) == ("WARN", "WARN")
    assert "CASCADE_MCP_SERVERS" in good["mcp:missing"].fix
    assert bad_token["home-assistant"].status == "WARN"
    assert "refused the token" in bad_token["home-assistant"].detail
    assert "wrong-token" not in json.dumps([c.__dict__ for c in bad_token.values()])
    assert "searxng" not in bad_token  # unconfigured: no line


def run_cli(sim: SimHandle, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    env |= {
        "CASCADE_RUNTIME_URL": sim.url,
        "CASCADE_REDIS_URL": redis_url,
        "PYTHONPATH": str(REPO),
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "doctor", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_prints_json_and_exits_1_only_on_fail(own_redis_server: RedisServer) -> None:
    with simulator() as sim:
        ok = run_cli(sim, own_redis_server.url, "--json")
        sim.sim.update_config(reasoning_parser="deepseek-r1")
        failed = run_cli(sim, own_redis_server.url, "--json")
        table = run_cli(sim, own_redis_server.url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rows = json.loads(ok.stdout)
    assert {row["status"] for row in rows} == {"PASS"}
    assert all(set(row) == {"check", "status", "detail", "fix"} for row in rows)
    assert failed.returncode == 1
    bad = [row for row in json.loads(failed.stdout) if row["status"] == "FAIL"]
    assert [row["check"] for row in bad] == ["reasoning-parser"]
    assert table.returncode == 1
    line = next(line for line in table.stdout.splitlines() if line.startswith("FAIL"))
    assert line.split()[1] == "reasoning-parser"
    assert " — relaunch the runtime" in line
