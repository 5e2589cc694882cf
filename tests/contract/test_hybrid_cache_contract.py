"""The simulator's hybrid-cache rules (`tests.sglang_sim.hybrid_cache`) against SGLang 0.5.23's
own functions, compiled from the wheel's source (`tests.contract.hybrid_reference`):
the match limit, the branching point, the prefill snapshot and the decode snapshot."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest

from tests.contract.hybrid_reference import MatchResult, sglang_function, sglang_runtime
from tests.sglang_sim import hybrid_cache as sim

pytestmark = pytest.mark.contract

SCHEDULE_BATCH = "srt/managers/schedule_batch.py"
MAMBA_COMPONENT = "srt/mem_cache/unified_cache/components/mamba.py"
RESULT_PROCESSOR = "srt/managers/scheduler_components/batch_result_processor.py"
PAGE_SIZES = [1, 16, 64, 128]


@pytest.fixture(params=PAGE_SIZES, ids=lambda p: f"page{p}")
def runtime(request: pytest.FixtureRequest) -> Iterator[SimpleNamespace]:
    with sglang_runtime(request.param, 256) as context:
        context.page_size = request.param
        yield context


def test_the_match_limit_is_sglangs() -> None:
    compute = sglang_function(SCHEDULE_BATCH, "Req", "_compute_max_prefix_len", {})
    req = SimpleNamespace(
        dllm_config=None, return_logprob=False, logprob_start_len=-1, is_dllm=lambda: False
    )
    for n in range(300):
        assert sim.max_prefix_len(n) == compute(req, n)


def test_the_grids_are_sglangs(runtime: SimpleNamespace) -> None:
    assert sim.checkpoint_grid(runtime.page_size) == runtime.mamba_checkpoint_grid(
        runtime.page_size
    )
    assert sim.track_grid(runtime.page_size, 256) == runtime.mamba_track_grid(runtime.page_size)


def test_the_branching_point_is_sglangs(runtime: SimpleNamespace) -> None:
    finalize = sglang_function(
        MAMBA_COMPONENT, "MambaComponent", "finalize_match_result_in_tree_core", {}
    )
    grid = runtime.mamba_checkpoint_grid(runtime.page_size)
    component = SimpleNamespace(mamba_checkpoint_grid=grid, has_host_value_only=lambda _: False)
    for mamba_len, extra in itertools.product(range(0, 513, grid), range(0, 300, 7)):
        kv_hit = (mamba_len + extra) // runtime.page_size * runtime.page_size
        result = MatchResult(None, mamba_len, 0, kv_hit)
        theirs = finalize(component, result, None, [], 0).mamba_branching_seqlen
        assert sim.branching_seqlen(kv_hit, mamba_len, grid) == theirs, (mamba_len, kv_hit)


def test_the_prefill_snapshot_is_sglangs(runtime: SimpleNamespace) -> None:
    namespace: dict[str, Any] = {
        "mamba_cache_chunk_size": runtime.mamba_cache_chunk_size,
        "mamba_checkpoint_grid": runtime.mamba_checkpoint_grid,
        "get_parallel": runtime.get_parallel,
        "get_exec": runtime.get_exec,
    }
    namespace["_MambaRadixCacheV2TrackEntry"] = sglang_function(
        SCHEDULE_BATCH, None, "_MambaRadixCacheV2TrackEntry", {"NamedTuple": NamedTuple}
    )
    prepare = sglang_function(
        SCHEDULE_BATCH, "ScheduleBatch", "_mamba_radix_cache_v2_req_prepare_for_extend", namespace
    )
    grid = runtime.mamba_checkpoint_grid(runtime.page_size)
    batch = SimpleNamespace(
        model_config=SimpleNamespace(hf_text_config=SimpleNamespace()),
        tree_cache=SimpleNamespace(page_size=runtime.page_size),
        req_to_token_pool=SimpleNamespace(get_mamba_ping_pong_other_idx=lambda i: 1 - i),
    )
    for prefix, extend in itertools.product(range(0, 513, grid), range(1, 400, 5)):
        seq_len = prefix + extend
        branchings = [None, *range(prefix + grid, seq_len, grid)]
        for branching in branchings:
            req = SimpleNamespace(
                prefix_len=prefix,
                extend_end=seq_len,
                extend_len=extend,
                mamba_branching_seqlen=branching,
                kv=SimpleNamespace(
                    mamba_next_track_idx=0, mamba_last_track_idx=None, mamba_last_track_seqlen=None
                ),
            )
            entry = prepare(batch, req)
            theirs = req.kv.mamba_last_track_seqlen if entry.track_mask else None
            ours = sim.prefill_track_seqlen(prefix, seq_len, grid, branching)
            assert ours == theirs, (prefix, seq_len, branching)


def test_the_decode_snapshot_is_sglangs(runtime: SimpleNamespace) -> None:
    check = sglang_function(
        RESULT_PROCESSOR,
        "SchedulerBatchResultProcessor",
        "_mamba_check_track_boundary",
        {"mamba_track_grid": runtime.mamba_track_grid},
    )
    interval = runtime.mamba_track_grid(runtime.page_size)
    processor = SimpleNamespace(tree_cache=SimpleNamespace(page_size=runtime.page_size))
    batch = SimpleNamespace(
        spec_algorithm=SimpleNamespace(is_none=lambda: True), mamba_decode_batch_idx_cpu=[0]
    )
    for prompt_len, output_len in itertools.product(range(1, 800, 53), range(1, 600, 29)):
        last = None
        # Decode step j feeds output token j: the computed length goes prompt+1 .. prompt+n-1.
        for computed in range(prompt_len + 1, prompt_len + output_len):
            req = SimpleNamespace(decode_batch_idx=0, kv=SimpleNamespace(kv_committed_len=computed))
            at_boundary, seqlen = check(processor, req, batch, None, 0)
            if at_boundary:
                last = seqlen
        computed_len = prompt_len + output_len - 1
        assert sim.decode_track_seqlen(prompt_len, computed_len, interval) == last
