"""SGLang 0.5.23's radix cache for a hybrid (Gated DeltaNet / Mamba + attention) model.

Launch flags modelled: `--mamba-radix-cache-strategy extra_buffer --page-size P
--mamba-track-interval T`. Attention KV can be reused from any page, but the recurrent state
of the linear-attention layers exists only where a snapshot was kept, so a cached prefix must
end at a node that holds one. Read from the wheel:

- `Req._compute_max_prefix_len` (managers/schedule_batch.py): at most `len(prompt) - 1`
  tokens are matched.
- The match (`UnifiedRadixCache.match_prefix` with the Mamba component's match validator,
  mem_cache/unified_cache/components/mamba.py): whole pages are matched, then the prefix is cut
  to the deepest node holding a state; `finalize_match_result_in_tree_core` sets
  `mamba_branching_seqlen`, the KV hit rounded down to the checkpoint grid, when it lies
  beyond that node. A node split at a divergence holds no state
  (`redistribute_on_node_split`).
- `ScheduleBatch._mamba_radix_cache_v2_req_prepare_for_extend`: prefill keeps ONE snapshot,
  at `prefix + (extend_len // grid) * grid` (none when fewer than `grid` tokens are new), or at
  the branching point instead when there is one.
- `checkpoint_into_tree` (`cache_unfinished_req` after prefill, `cache_finished_req` at the
  end) inserts the request's tokens only up to its tracked state (`effective_cache_len` is
  capped by `MambaComponent.prepare_for_caching_req`), so no KV is kept past a snapshot.
- `_mamba_check_track_boundary` (scheduler_components/batch_result_processor.py): decoding
  keeps a snapshot whenever the computed length is a multiple of `lcm(grid, T)`; only the
  last one is inserted when the request finishes (`_select_finished_checkpoint`).

`grid` is `mamba_checkpoint_grid(page) = lcm(max(64, page), page)` (64 is the FLA chunk size,
Qwen3.6 sets no `mamba_chunk_size`). So a conversation whose next prompt extends the previous
prompt and output token for token gets `max(previous prompt rounded down to grid, the last
lcm(grid, T)-multiple its generation computed)`; a conversation that rewrites anything before
that point falls back to an older snapshot (or a branching one) and the next turn loses too.

Not modelled: chunked prefill (prompts longer than `--chunked-prefill-size` keep one snapshot
per chunk), eviction by pool size (at most `max_sequences` inserted sequences are kept, oldest
out), `--mamba-max-states-per-path` (default unlimited), speculative decoding, HiCache.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "FLA_CHUNK_SIZE",
    "HybridRadixCache",
    "Prefill",
    "branching_seqlen",
    "checkpoint_grid",
    "decode_track_seqlen",
    "max_prefix_len",
    "prefill_track_seqlen",
    "track_grid",
]

# sglang.kernels.ops.attention.fla.chunk_delta_h.CHUNK_SIZE, the state chunk of the GDN layers.
FLA_CHUNK_SIZE = 64


def checkpoint_grid(page_size: int, state_chunk: int = FLA_CHUNK_SIZE) -> int:
    """`mamba_checkpoint_grid`: `lcm(mamba_cache_chunk_size, page)`, where the chunk size is
    `max(state_chunk, page)`; where a prefill snapshot (and so a cached prefix) may end."""
    return math.lcm(max(state_chunk, page_size), page_size)


def track_grid(page_size: int, track_interval: int) -> int:
    """`mamba_track_grid`: where a decode snapshot is taken."""
    return math.lcm(checkpoint_grid(page_size), track_interval)


def max_prefix_len(input_len: int) -> int:
    """`Req._compute_max_prefix_len` without logprobs or dLLM: the last token is computed."""
    return max(input_len - 1, 0)


def branching_seqlen(kv_hit: int, mamba_len: int, grid: int) -> int | None:
    """`finalize_match_result_in_tree_core`: the grid-aligned KV hit when it lies past the
    deepest state (the divergence a split node left without one), else None."""
    aligned = kv_hit // grid * grid
    return aligned if aligned > mamba_len else None


def prefill_track_seqlen(
    prefix_len: int,
    seq_len: int,
    grid: int,
    branching: int | None,
    state_chunk: int = FLA_CHUNK_SIZE,
) -> int | None:
    """Where prefill keeps its snapshot (`_mamba_radix_cache_v2_req_prepare_for_extend`,
    no DCP): None when fewer than `grid` tokens are computed; the branching point when it lies
    in this extend; else the last grid point of the extend."""
    extend_len = seq_len - prefix_len
    if extend_len < grid:
        return None
    aligned = prefix_len + extend_len // grid * grid
    fla_aligned = prefix_len + extend_len // state_chunk * state_chunk
    # The seqlen handed to the kernel: the end, or one past a snapshot taken from `h`.
    kernel_seqlen = seq_len if fla_aligned == aligned else aligned + 1
    if (
        branching is not None
        and prefix_len < branching < kernel_seqlen
        and (branching - prefix_len) % max(state_chunk, grid) == 0
    ):
        return branching
    return aligned


def decode_track_seqlen(prompt_len: int, computed_len: int, interval: int) -> int | None:
    """The last decode snapshot (`_mamba_check_track_boundary`): the largest multiple of
    `interval` in `(prompt_len, computed_len]`, None if decoding crossed none. `computed_len`
    counts the prompt and the output tokens fed back (the last sampled token never is)."""
    last = computed_len // interval * interval
    return last if last > prompt_len else None


@dataclass(frozen=True)
class Prefill:
    """What prefill did: `cached` tokens reused, where it kept a snapshot (None: nowhere),
    and the branching point the match reported."""

    cached: int
    tracked: int | None
    branching: int | None


class _Node:
    __slots__ = ("children", "count", "states")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.count = 0  # stored sequences passing through
        self.states = 0  # stored sequences ending here (each holds a snapshot at its end)


class HybridRadixCache:
    """Token sequences with a recurrent-state snapshot at the end of each; see the module doc.

    `prefill(prompt)` matches, keeps the prefill snapshot and inserts it (returns the cached
    tokens; `prefill_detail` says where the snapshot went); `finish(prompt, output, fed)`
    inserts the last decode snapshot. Thread-safe.
    """

    def __init__(
        self, page_size: int = 64, track_interval: int = 256, *, max_sequences: int = 1024
    ) -> None:
        if page_size < 1 or track_interval < 1 or max_sequences < 1:
            raise ValueError("page_size, track_interval and max_sequences must be positive")
        if track_interval % page_size:
            # mamba_hook.py asserts this at launch.
            raise ValueError("mamba_track_interval must be a multiple of page_size")
        self.page_size = page_size
        self.grid = checkpoint_grid(page_size)
        self.interval = track_grid(page_size, track_interval)
        self.max_sequences = max_sequences
        self._lock = threading.Lock()
        self._root = _Node()
        self._keys: OrderedDict[tuple[str, ...], None] = OrderedDict()

    def __len__(self) -> int:
        """The number of stored sequences (snapshots)."""
        return len(self._keys)

    def match(self, tokens: Sequence[str]) -> tuple[int, int]:
        """`(prefix with a state, KV hit)` for a prompt: both page-aligned, within
        `max_prefix_len`."""
        limit = max_prefix_len(len(tokens))
        with self._lock:
            node, depth, with_state = self._root, 0, 0
            for token in tokens[:limit]:
                child = node.children.get(token)
                if child is None:
                    break
                node, depth = child, depth + 1
                if node.states:
                    with_state = depth
        kv_hit = depth // self.page_size * self.page_size
        return with_state // self.page_size * self.page_size, kv_hit

    def prefill(self, tokens: Sequence[str]) -> int:
        """Cached tokens of a prompt about to be prefilled; see `prefill_detail`."""
        return self.prefill_detail(tokens).cached

    def prefill_detail(self, tokens: Sequence[str]) -> Prefill:
        """Match `tokens`, keep the prefill snapshot and insert it (`cache_unfinished_req`)."""
        cached, kv_hit = self.match(tokens)
        branching = branching_seqlen(kv_hit, cached, self.grid)
        tracked = prefill_track_seqlen(cached, len(tokens), self.grid, branching)
        if tracked is not None:
            self._insert(tuple(tokens[:tracked]))
        return Prefill(cached=cached, tracked=tracked, branching=branching)

    def finish(self, prompt: Sequence[str], output: Sequence[str], fed: int) -> int | None:
        """Insert the last decode snapshot of a finished request (`cache_finished_req`):
        `fed` is how many `output` tokens were computed. Returns its length, or None."""
        computed = [*prompt, *output[:fed]]
        last = decode_track_seqlen(len(prompt), len(computed), self.interval)
        if last is not None:
            self._insert(tuple(computed[:last]))
        return last

    def reset(self) -> None:
        """Forget every snapshot."""
        with self._lock:
            self._root = _Node()
            self._keys.clear()

    def _insert(self, key: tuple[str, ...]) -> None:
        with self._lock:
            if key in self._keys:
                self._keys.move_to_end(key)
                return
            self._keys[key] = None
            node = self._root
            for token in key:
                child = node.children.get(token)
                if child is None:
                    child = node.children[token] = _Node()
                child.count += 1
                node = child
            node.states += 1
            while len(self._keys) > self.max_sequences:
                oldest, _ = self._keys.popitem(last=False)
                self._remove(oldest)

    def _remove(self, key: tuple[str, ...]) -> None:
        node = self._root
        for token in key:
            child = node.children[token]
            child.count -= 1
            if child.count == 0:
                del node.children[token]
                return
            node = child
        node.states -= 1
