"""The doors benchmark runs end to end: both doors answer its bodies, and it reports each pair."""

from __future__ import annotations

import pytest

from tests.bench import doors


@pytest.mark.timeout(120)
def test_the_doors_benchmark_measures_every_pair_through_both_doors() -> None:
    results = doors.run(turns=2, blocks=2)
    assert results["benchmark"] == "doors"
    assert results["targets"] == {"ratio_max": doors.RATIO_MAX}
    for name in doors.PAIRS:
        pair = results[name]
        assert set(pair) == {"chat_cpu_ms_per_turn", "responses_cpu_ms_per_turn", "ratio"}
        assert pair["chat_cpu_ms_per_turn"] >= 0 and pair["responses_cpu_ms_per_turn"] >= 0
        if pair["chat_cpu_ms_per_turn"]:
            expected = pair["responses_cpu_ms_per_turn"] / pair["chat_cpu_ms_per_turn"]
            assert pair["ratio"] == pytest.approx(expected, abs=0.01)
