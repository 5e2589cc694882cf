"""Prefix reuse on the hybrid model, through cascade's API, against the simulator's model of
SGLang's Mamba radix cache (`tests.sglang_sim.hybrid_cache`, launched as cascade launches the
runtime: `--mamba-radix-cache-strategy extra_buffer --page-size 64 --mamba-track-interval 256`).

The runtime keeps a recurrent-state snapshot at each prompt rounded down to 64 tokens and at
every 256th token its generation computes; the next request can reuse at most the deepest of
the previous request's snapshots, and only when the next prompt still starts with it. cascade
renders every turn so that it does: from the second request on, `cached_tokens` is exactly
that maximum, in 10-turn sessions with server tools, thinking off and on. Run with `-s` to see
the tables (request, cached, prompt, maximum).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from openai import OpenAI

from tests.integration.conftest import Cascade
from tests.integration.test_agent_tools import Recorder, call, register_tools
from tests.integration.test_chat_api import extra
from tests.sglang_sim.script import Rule
from tests.sglang_sim.state import RecordedRequest
from tests.sglang_sim.testing import SimHandle

PAGE, INTERVAL = 64, 256
HYBRID = {"mamba_cache": True, "cache_page_size": PAGE, "mamba_track_interval": INTERVAL}
SYSTEM = "You are a careful assistant. " + " ".join(f"Rule {i}: be precise." for i in range(150))
TURNS = 10
LONG_TURNS = (4, 7)  # answers (or reasoning) long enough to cross a 256-token snapshot


def maximum(prev: RecordedRequest) -> int:
    """The most the previous request's snapshots allow: its prompt rounded down to the page,
    or the last multiple of the interval its decoding computed (the last sampled token is
    never fed back), whichever is deeper."""
    computed = prev.prompt_tokens + prev.completion_tokens - 1
    decoded = computed // INTERVAL * INTERVAL
    return max(prev.prompt_tokens // PAGE * PAGE, decoded if decoded > prev.prompt_tokens else 0)


def table(records: Sequence[RecordedRequest]) -> list[tuple[int, int, int, int | None]]:
    """(request, cached, prompt, maximum) per request; no maximum for the first."""
    rows: list[tuple[int, int, int, int | None]] = []
    for i, rec in enumerate(records):
        best = maximum(records[i - 1]) if i else None
        rows.append((i + 1, rec.cached_tokens, rec.prompt_tokens, best))
    return rows


def show(title: str, rows: list[tuple[int, int, int, int | None]]) -> str:
    lines = [title, "request  cached  prompt  maximum"]
    for n, cached, prompt, best in rows:
        mark = "" if best is None or cached == best else "  <- lost"
        lines.append(f"{n:>7}  {cached:>6}  {prompt:>6}  {'-' if best is None else best:>7}{mark}")
    text = "\n".join(lines)
    print(text)
    return text


def words(n: int, word: str) -> str:
    return " ".join([word] * n)


def script(sim: SimHandle, turn: int, *, thinking: bool) -> None:
    """Turn `turn`'s outputs: every third turn calls `lookup` first; some turns are long."""
    long = turn in LONG_TURNS
    reasoning = (
        f"{words(300 if long else 12, 'hmm')} turn {turn}.\n</think>\n\n" if thinking else ""
    )
    if turn % 3 == 0:
        sim.sim.add_rule(
            Rule(match=f"turn {turn}", output=reasoning + call("lookup", key=str(turn)), times=1)
        )
    answer = f"Answer {turn}: " + words(300 if long and not thinking else 8, "fine") + "."
    sim.sim.add_rule(Rule(match=f"turn {turn}", output=reasoning + answer))


def run_session(client: OpenAI, sim: SimHandle, **options: object) -> list[RecordedRequest]:
    sim.sim.update_config(**HYBRID)
    script(sim, 0, thinking=bool(options.get("thinking")))
    first = client.chat.completions.create(
        model="m",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "turn 0"}],
        extra_body={"server_tools": ["lookup"], "store": True, **options},
    )
    session_id = extra(first, "session_id")
    for turn in range(1, TURNS):
        script(sim, turn, thinking=bool(options.get("thinking")))
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": f"turn {turn}"}],
            extra_body={"session_id": session_id, "server_tools": ["lookup"]},
        )
    records = sim.sim.requests
    assert len(records) == TURNS + 4  # four turns ran a tool step first
    return records


@pytest.mark.parametrize(
    "options",
    [{"thinking": False}, {"thinking": True, "preserve_thinking": True}],
    ids=["thinking_off", "thinking_on_preserved"],
)
def test_every_request_reuses_the_most_the_hybrid_cache_allows(
    client: OpenAI, cascade: Cascade, sim: SimHandle, options: dict[str, object]
) -> None:
    register_tools(cascade, Recorder())
    records = run_session(client, sim, **options)
    rows = table(records)
    text = show(f"hybrid cache, {options}", rows)
    assert [cached for _, cached, _, _ in rows[1:]] == [best for *_, best in rows[1:]], text
    # Long answers and long reasoning left decode snapshots past their prompts, reused next.
    assert sum(maximum(prev) > prev.prompt_tokens for prev in records[:-1]) >= 2


def test_dropping_earlier_reasoning_costs_the_last_turns_snapshots_only(
    client: OpenAI, cascade: Cascade, sim: SimHandle
) -> None:
    """`preserve_thinking` off with thinking on: a new user message drops the reasoning of the
    turn before it, so the reuse falls back to the snapshot just before that turn's first think
    block (at most a page short of its first prompt); the tool steps inside a turn, whose
    reasoning stays, still reuse the maximum."""
    register_tools(cascade, Recorder())
    records = run_session(client, sim, thinking=True)
    rows = table(records)
    show("hybrid cache, thinking on, reasoning of earlier turns dropped", rows)
    turn_start = 0
    for i in range(1, len(records)):
        _, cached, _, best = rows[i]
        if records[i].body["messages"][-1]["role"] == "tool":
            assert cached == best
            continue
        previous_turn = records[turn_start].prompt_tokens
        assert (previous_turn // PAGE - 1) * PAGE <= cached < previous_turn
        turn_start = i
    # Only the running turn's reasoning is in the prompt: one short think block's worth.
    assert records[-1].prompt is not None
    assert records[-1].prompt.count("hmm") == 12
