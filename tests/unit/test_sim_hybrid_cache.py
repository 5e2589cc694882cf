"""`tests.sglang_sim.hybrid_cache` against what a real runtime measured.

The figures are the third run's in /work/shared/docs/SGLANG.md (SGLang with
`--mamba-radix-cache-strategy extra_buffer --page-size 64`, a ~2,000-token system message,
5-turn sessions, thinking off): a turn's prompt ends with the generation prompt's 6-token
empty think block, which a plain render of that turn drops and a preserved one keeps. The
contract suite checks the helpers against SGLang's own functions.
"""

from __future__ import annotations

import pytest

from tests.sglang_sim.__main__ import _parser, config_from_args
from tests.sglang_sim.hybrid_cache import (
    HybridRadixCache,
    branching_seqlen,
    decode_track_seqlen,
    max_prefix_len,
    prefill_track_seqlen,
)

THINK_BLOCK = ("<think>", "\n", "\n", "</think>", "\n", "\n")
EOS = "<|im_end|>"


def session(
    first_prompt: int, growth: int, answer: int, *, preserve: bool, turns: int = 5
) -> list[tuple[int, int]]:
    """(cached, prompt) per turn of a chat whose prompts grow by `growth` tokens a turn and
    whose answers are `answer` tokens (then EOS); the think block ends every prompt and stays
    in the next one only when `preserve`."""
    cache = HybridRadixCache(page_size=64, track_interval=256)
    fresh = iter(range(10**9))
    history = [f"s{next(fresh)}" for _ in range(first_prompt - len(THINK_BLOCK))]
    rows = []
    for _ in range(turns):
        prompt = [*history, *THINK_BLOCK]
        rows.append((cache.prefill(prompt), len(prompt)))
        output = [f"a{next(fresh)}" for _ in range(answer)]
        cache.finish(prompt, [*output, EOS], fed=answer)
        kept = list(THINK_BLOCK) if preserve else []
        filler = growth - len(kept) - answer - 1
        history = [*history, *kept, *output, EOS, *(f"u{next(fresh)}" for _ in range(filler))]
    return rows


def test_a_plain_render_whose_dropped_block_sits_before_the_last_page_start_loses_reuse() -> None:
    # Padding to a length of 1 mod 64: the block straddles the last 64-aligned point.
    rows = session(2113, 128, 20, preserve=False)
    assert rows == [(0, 2113), (0, 2241), (2048, 2369), (2048, 2497), (2304, 2625)]


def test_a_preserved_render_reuses_the_previous_prompt_rounded_down_to_the_page() -> None:
    rows = session(2113, 128, 20, preserve=True)
    assert rows == [(0, 2113), (2112, 2241), (2240, 2369), (2368, 2497), (2496, 2625)]


def test_a_long_answer_adds_its_decode_snapshot_only_when_the_render_keeps_the_prefix() -> None:
    plain = session(2080, 384, 300, preserve=False, turns=3)
    preserved = session(2080, 384, 300, preserve=True)
    assert plain[1:] == [(2048, 2464), (2432, 2848)]
    assert preserved[1:] == [(2304, 2464), (2560, 2848), (3072, 3232), (3328, 3616)]


def test_the_same_prompt_twice_reuses_it_rounded_down_to_the_page() -> None:
    cache = HybridRadixCache()
    prompt = [f"t{i}" for i in range(750)]
    assert cache.prefill(prompt) == 0
    cache.finish(prompt, [EOS], fed=0)
    assert cache.prefill(prompt) == 704


def test_the_match_never_covers_the_whole_prompt() -> None:
    # A page-aligned prompt's only snapshot is at its end, which the match may not reach: the
    # repeat reuses nothing and keeps the branching point, which the third send reuses.
    cache = HybridRadixCache()
    prompt = [f"t{i}" for i in range(128)]
    assert max_prefix_len(128) == 127
    assert [cache.prefill(prompt) for _ in range(3)] == [0, 0, 64]


def test_prefill_keeps_no_snapshot_when_fewer_than_a_page_of_tokens_are_new() -> None:
    cache = HybridRadixCache()
    first = [f"t{i}" for i in range(100)]
    cache.prefill(first)  # snapshot at 64
    detail = cache.prefill_detail([*first, *(f"n{i}" for i in range(20))])
    assert (detail.cached, detail.tracked) == (64, None)


def test_a_divergence_inside_a_kept_sequence_keeps_the_branching_point_instead() -> None:
    cache = HybridRadixCache()
    base = [f"t{i}" for i in range(300)]
    cache.prefill(base)  # snapshot at 256
    other = [*base[:200], *(f"x{i}" for i in range(200))]
    detail = cache.prefill_detail(other)
    assert (detail.cached, detail.branching, detail.tracked) == (0, 192, 192)
    assert cache.prefill([*other, "y"]) == 192


@pytest.mark.parametrize(
    ("prompt_len", "computed", "expected"),
    [(2113, 2133, None), (2080, 2380, 2304), (2000, 2600, 2560), (2304, 2500, None)],
)
def test_decode_keeps_the_last_interval_multiple_past_the_prompt(
    prompt_len: int, computed: int, expected: int | None
) -> None:
    assert decode_track_seqlen(prompt_len, computed, 256) == expected


def test_branching_needs_a_kv_hit_past_the_deepest_state() -> None:
    assert branching_seqlen(2107, 0, 64) == 2048
    assert branching_seqlen(2107, 2048, 64) is None
    assert prefill_track_seqlen(0, 2241, 64, 2048) == 2048
    assert prefill_track_seqlen(2048, 2369, 64, None) == 2368


def test_the_launch_flags_select_the_hybrid_cache() -> None:
    argv = ["--mamba-radix-cache-strategy", "extra_buffer", "--page-size", "64"]
    config = config_from_args(_parser().parse_args([*argv, "--mamba-track-interval", "512"]))
    assert (config.mamba_cache, config.cache_page_size, config.mamba_track_interval) == (
        True,
        64,
        512,
    )
    assert config_from_args(_parser().parse_args([])).mamba_cache is False
    with pytest.raises(ValueError, match="multiple of cache_page_size"):
        config_from_args(_parser().parse_args([*argv, "--mamba-track-interval", "100"]))
