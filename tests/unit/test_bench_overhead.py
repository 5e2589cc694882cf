"""The overhead bench's judgement: cascade's CPU over the floor's, the CPU targets scaled by the
floor measured here against the issue's 0.6 ms, and each target met or not."""

from __future__ import annotations

from typing import Any

import pytest

from tests.bench.overhead import STREAM_RUNS, TARGETS, TURN_RUNS, judge, vs_floor


def figures(
    turn_ms: float, *, chunk_us: float = 20.0, paced_us: float = 60.0, token_us: float = 10.0
) -> dict[str, Any]:
    out: dict[str, Any] = {name: {"cpu_ms_per_turn": turn_ms} for name in TURN_RUNS}
    out["stream"] = {"cpu_us_per_chunk": chunk_us, "cpu_us_per_token": token_us}
    out["paced"] = {"cpu_us_per_chunk": paced_us, "cpu_us_per_token": paced_us}
    return out


def results(cascade: dict[str, Any], floor: dict[str, Any], **extra: Any) -> dict[str, Any]:
    out = {
        **cascade,
        "history": {"ratio_200_vs_2": 1.4},
        "streams_c16": {"tokens_per_s_ratio": 0.99, "ttft_added_ms_p50": 2.0},
        "floor": floor,
    }
    return out | extra


def test_vs_floor_divides_each_cpu_figure_by_the_floors() -> None:
    cascade = figures(3.0, chunk_us=100.0, paced_us=150.0, token_us=40.0)
    floor = figures(1.5, chunk_us=20.0, paced_us=100.0, token_us=20.0)
    ratios = vs_floor(cascade, floor)
    assert set(ratios) == {*TURN_RUNS} | {
        f"{name}_per_{unit}" for name in STREAM_RUNS for unit in ("chunk", "token")
    }
    assert all(ratios[name] == 2.0 for name in TURN_RUNS)
    assert ratios["stream_per_chunk"] == 5.0
    assert ratios["stream_per_token"] == 2.0
    assert ratios["paced_per_chunk"] == 1.5


def test_a_floor_figure_of_zero_gives_no_ratio() -> None:
    floor = figures(1.0, chunk_us=0.0)
    assert vs_floor(figures(2.0), floor)["stream_per_chunk"] is None


def test_cpu_targets_scale_by_the_floor_turn_and_ratio_targets_do_not() -> None:
    # A floor of 1.2 ms here against the 0.6 ms: this machine counts as 2x slower.
    out = judge(results(figures(1.5), figures(1.2)), TARGETS)
    assert out["machine_factor"] == 2.0
    scaled = out["targets_scaled"]
    assert scaled["cpu_ms_per_turn_max"] == pytest.approx(2 * TARGETS["cpu_ms_per_turn_max"])
    assert scaled["cpu_us_per_chunk_max"] == pytest.approx(2 * TARGETS["cpu_us_per_chunk_max"])
    assert scaled["cpu_us_per_chunk_paced_max"] == pytest.approx(
        2 * TARGETS["cpu_us_per_chunk_paced_max"]
    )
    for name in ("history_ratio_max", "streams_tokens_per_s_ratio_min"):
        assert scaled[name] == TARGETS[name]
    assert set(out["met"]) == set(TARGETS)
    assert all(out["met"].values())


def test_the_turn_target_needs_every_turn_measurement_under_it() -> None:
    cascade = figures(1.5)
    cascade["idle_c16"] = {"cpu_ms_per_turn": 2.5}  # over 2.0, the others under
    met = judge(results(cascade, figures(1.2)), TARGETS)["met"]
    assert met["cpu_ms_per_turn_max"] is False
    assert met["cpu_us_per_chunk_max"] is True


def test_a_figure_over_its_scaled_target_is_not_met_and_a_min_is_met_from_above() -> None:
    # Floor at the issue's own 0.6 ms: factor 1, the targets as written.
    cascade = figures(0.9, chunk_us=30.0, paced_us=80.0)
    streams = {"tokens_per_s_ratio": 0.97, "ttft_added_ms_p50": 5.0}
    out = judge(results(cascade, figures(0.6), streams_c16=streams), TARGETS)
    assert out["machine_factor"] == 1.0
    met = out["met"]
    assert met["cpu_ms_per_turn_max"] is True
    assert met["cpu_us_per_chunk_max"] is False  # 30 > 25
    assert met["cpu_us_per_chunk_paced_max"] is True  # 80 <= 80
    assert met["streams_tokens_per_s_ratio_min"] is False  # 0.97 < 0.98
    assert met["streams_ttft_added_ms_max"] is True
