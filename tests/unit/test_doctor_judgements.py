"""`cascade doctor`'s verdicts from measured values, and its output formats."""

from __future__ import annotations

import json

from app.cli.doctor import (
    IMAGE_TOLERANCE,
    TOOL_NAME,
    Check,
    exit_code,
    image_estimate,
    judge_budget,
    judge_image,
    judge_tool_choice,
    render_json,
    render_table,
    spec_accept_length,
)
from app.media.config import MediaSettings
from app.runtime.models import Completion, ToolCall, ToolCallFunction, Usage


def completion(**fields: object) -> Completion:
    return Completion(rid="r", model="m", **fields)  # type: ignore[arg-type]


def test_a_named_tool_choice_answered_without_that_call_fails() -> None:
    assert judge_tool_choice(completion(content="hello")).status == "FAIL"
    other = ToolCall(id="call_1", function=ToolCallFunction(name="other"))
    assert "other" in judge_tool_choice(completion(tool_calls=[other])).detail
    right = ToolCall(id="call_2", function=ToolCallFunction(name=TOOL_NAME))
    assert judge_tool_choice(completion(tool_calls=[right])).status == "PASS"


def test_reasoning_shorter_than_the_budget_is_inconclusive_not_a_pass() -> None:
    check = judge_budget(completion(usage=Usage(reasoning_tokens=9)))
    assert (check.status, check.detail.startswith("inconclusive")) == ("WARN", True)
    assert judge_budget(completion(usage=Usage(reasoning_tokens=17))).status == "PASS"
    assert judge_budget(completion(usage=Usage(reasoning_tokens=40))).status == "WARN"


def test_image_cost_is_compared_with_cascades_resize_estimate_within_the_tolerance() -> None:
    estimate = image_estimate(MediaSettings.load())
    assert estimate == 64  # 256x256 at one token per 32x32 pixels
    assert judge_image(estimate + IMAGE_TOLERANCE, estimate).status == "PASS"
    assert judge_image(estimate + IMAGE_TOLERANCE + 1, estimate).status == "WARN"
    assert judge_image(estimate * 4, estimate).status == "WARN"


def test_accept_length_is_read_from_prometheus_text() -> None:
    text = (
        "# HELP sglang:spec_accept_length x\n# TYPE sglang:spec_accept_length gauge\n"
        'sglang:spec_accept_length{model_name="m",tp_rank="0"} 3.25\n'
    )
    assert spec_accept_length(text) == 3.25
    assert spec_accept_length("sglang:num_running_reqs 1.0\n") is None


def test_table_and_json_formats_and_exit_status() -> None:
    checks = [
        Check("redis", "PASS", "redis://127.0.0.1:6379/0"),
        Check("image", "FAIL", "rejected", "serve the vision checkpoint"),
    ]
    lines = render_table(checks).splitlines()
    assert lines[0] == "PASS  redis  redis://127.0.0.1:6379/0"
    assert lines[1] == "FAIL  image  rejected — serve the vision checkpoint"
    assert json.loads(render_json(checks))[1] == {
        "check": "image",
        "status": "FAIL",
        "detail": "rejected",
        "fix": "serve the vision checkpoint",
    }
    assert exit_code(checks) == 1
    assert exit_code(checks[:1]) == 0
    assert exit_code([Check("x", "WARN", "w")]) == 0
