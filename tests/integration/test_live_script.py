"""`python -m tests.live` (what `make live` runs after the doctor), with the simulator standing in
for the live runtime: `cascade up` comes up on it, and the session, tool, image and batch steps
all pass; without CASCADE_LIVE_RUNTIME_URL it refuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.live import TOOL_PROMPT
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import running_simulator

REPO = Path(__file__).resolve().parents[2]
CALCULATOR_CALL = (
    "<tool_call>\n<function=calculator>\n<parameter=expression>\n1234 * 5678\n</parameter>\n"
    "</function>\n</tool_call>"
)


def run_live(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    return subprocess.run(
        [sys.executable, "-m", "tests.live"],
        env=base | {"PYTHONPATH": str(REPO)} | env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_live_run_passes_every_step_against_the_simulator() -> None:
    rules = [Rule(match=TOOL_PROMPT[:30], output=CALCULATOR_CALL, times=1)]
    with running_simulator(rules=rules) as sim:
        done = run_live({"CASCADE_LIVE_RUNTIME_URL": sim.url})
        prompts = [record.prompt or "" for record in sim.sim.requests]
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["PASS", "session"],
        ["PASS", "tools"],
        ["PASS", "image"],
        ["PASS", "batch"],
    ]
    # The calculator ran: its result reached the model's next prompt.
    assert any("7006652" in prompt for prompt in prompts)
    assert sum("batch item" in prompt for prompt in prompts) == 10


def test_live_run_refuses_without_a_runtime_url() -> None:
    done = run_live({})
    assert done.returncode == 2
    assert "CASCADE_LIVE_RUNTIME_URL" in done.stderr
