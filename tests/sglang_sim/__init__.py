"""A faithful-where-it-matters simulator of an SGLang 0.5.23 runtime serving Qwen3.6.

cascade's tests talk to it over real HTTP through cascade's own runtime client, exactly as
they would talk to SGLang launched as cascade launches it (`cascade runtime --print`:
`--reasoning-parser qwen3
--tool-call-parser qwen3_coder --enable-strict-thinking --default-chat-template-kwargs
'{"enable_thinking": false}' --enable-cache-report --enable-metrics [--api-key K]`).

Public API: `Rule`, `Fault`, `SimConfig` (script.py); `Simulator` with `add_rule`,
`set_rules`, `update_config`, `reset`, `requests` (`RecordedRequest`s), `aborted_rids`,
`app` (server.py); `running_simulator`, `spawn_simulator` (testing.py).

Usage::

    from tests.sglang_sim import Rule, SimConfig
    from tests.sglang_sim.testing import running_simulator

    with running_simulator(SimConfig(tpot=0.001)) as handle:
        handle.sim.add_rule(Rule(match="weather", output="It is sunny."))
        ...  # point cascade at handle.url; inspect handle.sim.requests afterwards

or standalone: `python -m tests.sglang_sim --port 30000 [--api-key K] [--ttft S] [--tpot S]
[--max-running N] [--ignore-thinking-budget] ...`, scripted via `POST /sim/rules`.

What is simulated (each point follows SGLang 0.5.23's source, file named)
- `POST /v1/chat/completions`, streaming and not. The "model" output is the raw text of the
  first matching `Rule` (or a short default answer), emitted one token per decode step after
  `ttft`, `tpot` apart. It is split into `reasoning_content` / `content` / `tool_calls` by
  `tests.sglang_sim.parsing` (the qwen3 reasoning parser and qwen3_coder tool parser).
  Response and chunk shapes, key order, null vs omitted fields, the two chunk encodings
  (sse_utils.py vs pydantic), `matched_stop`, `metadata.weight_version`, the final
  `finish_reason` chunk, the `choices: []` usage chunk and `[DONE]` follow serving_chat.py,
  protocol.py, sse_utils.py, usage_processor.py. Response `id` = the request's `rid` (a uuid4
  hex when none is given), `model` = the request's `model` field, as in SGLang.
- Streaming response headers are sent only with the first chunk, i.e. after the first token
  (serving_chat.py `_handle_streaming_request` primes the generator), so errors found before
  generation (validation, duplicate rid, context length) are plain JSON errors.
- Prompt: rendered with `tests.sglang_sim.template.render_chat_prompt` after merging
  `chat_template_kwargs` over the server default (`setdefault`) and folding
  `reasoning_effort` into `enable_thinking`. `continue_final_message` drops the final
  assistant message and appends its content after the generation prompt (its reasoning is
  not rendered); without it a final assistant message becomes a user message (SGLang does
  that). tool_choice "none" leaves the tools out of the prompt; a named tool_choice renders
  only that tool.
- A forced tool_choice constrains the answer as SGLang's tool-call grammar does (xgrammar's
  `qwen_3_coder` structural tag, from `get_structure_constraint`, after the reasoning):
  "required" makes it open with a call to an offered tool, a named function makes it exactly
  one call to that tool; a script the grammar would not allow is shaped to fit
  (`tests.sglang_sim.generation.forced_tool_answer` says how).
- `response_format` (json_object, json_schema) is a JSON grammar on the answer, after
  `</think>` when thinking (the reasoner grammar), from the first token otherwise; with a
  forcing tool_choice it is a 400, as in SGLang (`tests.sglang_sim.json_grammar` says how a
  script is fitted; `Rule.ignore_response_format` scripts a runtime that lets bad JSON out).
- Thinking is "on" unless the merged `enable_thinking` is false. Then `reasoning_tokens`
  counts every output token up to and including `</think>` (batch_result_processor.py) and
  strict thinking applies `custom_params.thinking_budget` (an int; negative = none): past N
  reasoning tokens the output becomes those N tokens + a forced `</think>` + the script's
  text after its own `</think>`, so `reasoning_tokens` = N + 1 (as seen on a real runtime).
  `SimConfig.ignore_thinking_budget` reproduces sglang issue #25536.
- Finishing, in `Req.check_finished` order: stop string (text trimmed before it,
  `matched_stop` = the string; streamed text that may start a stop string is held back),
  EOS (`matched_stop` = 248046, `<|im_end|>`, unconfirmed id; EOS counts as a completion
  token, as in SGLang), then `max_completion_tokens or max_tokens` (`length`, reasoning and
  answer both count). Without a limit the cap is context length minus prompt.
- Non-streaming `finish_reason` becomes `tool_calls` (and `matched_stop` null) when calls
  were parsed and it was `stop`; streaming likewise when any tool-call delta was sent
  (`matched_stop` kept). Tool call ids are `call_` + 24 hex.
- Usage: `prompt_tokens`, `total_tokens`, `completion_tokens`, `prompt_tokens_details`
  (`{"cached_tokens": N}` when the cache report is on, plus `image_tokens` with images),
  `reasoning_tokens` and `completion_tokens_details` (only when reasoning_tokens > 0).
  `stream_options.continuous_usage_stats` attaches usage to content chunks.
- Prefix cache: `RadixCache` over the prompt tokens (page size `SimConfig.cache_page_size`,
  default 1; the real launch uses 64), queried when a request leaves the queue; prompt +
  output are stored at the end, as SGLang caches finished requests.
- Scheduling: at most `max_running` requests generate; the rest wait FIFO (priority is
  ignored). `sglang:num_running_reqs` / `num_queue_reqs` report both.
- Abort (`POST /abort_request {"rid", "abort_all"}`): as tokenizer_manager.py + scheduler.py,
  the rid must name a live request exactly (else nothing happens), then every live request
  whose rid starts with it is aborted, queued or running. A client disconnect aborts the
  request's own rid the same way (so also rids it prefixes). An aborted request ends with
  `finish_reason: "abort"` and HTTP 200 (non-streaming: the text so far; streaming: a finish
  chunk, usage, `[DONE]`); one aborted while queued reports zero prompt/cached tokens.
  Duplicate live rids get a 400.
- A continued final assistant message with null content makes SGLang's reasoning parser fail
  (previous_content None): non-streaming 500 "Failed to parse reasoning content", streaming
  a broken connection after the role chunk (only when the reasoning parser runs).
- Errors: body validation errors are 400 `{"object": "error", "message", "type": "Bad
  Request", "param": null, "code": 400}` (FastAPI's message, as http_server.py); checks of
  `_validate_request` and of the context length are 400 "BadRequestError"; template errors
  400 "BadRequest"; an undecodable image 500 "InternalServerError".
- Auth: with `api_key`, every endpoint but `/health*`, `/ready*`, `/metrics*` (and the
  simulator's own `/sim/*`) needs `Authorization: Bearer KEY`, else 401 `{"error":
  "Unauthorized"}` (utils/auth.py).
- Other endpoints: `/health`, `/health_generate`, `/ready` (503 until a generation finished
  when `healthy_after_first_generation`), `/flush_cache` (400 while requests are live),
  `/model_info`, `/server_info` (a subset),
  `/v1/models`, `/v1/models/{id}`, `/metrics` (Prometheus text: num_running_reqs,
  num_queue_reqs, gen_throughput, token_usage, cache_hit_rate, spec_accept_length with
  SGLang's scheduler labels, `priority=""` among them when priority scheduling is on; token,
  request and abort counters with tokenizer labels).
- Faults (`Rule.fault`): http_500, http_429 (+ Retry-After), hang, cut_stream (connection
  dropped without `[DONE]`), malformed_chunk (one chunk that is not JSON); each fires
  `times` times, then the rule answers normally.

Token approximation: `tests.sglang_sim.tokens` (special tokens are one token; words, digit
groups and punctuation runs are one token each). Images count one token per 32x32 patch of
the image resized as Qwen's smart_resize does (size read from a data: URI; 256 for URLs).

Deliberate differences from SGLang
- Output is scripted, not sampled: sampling parameters, seeds and logprobs do not change it
  (a forced tool_choice and a JSON response_format do, see above; parameter values are checked with
  jsonschema, not with xgrammar's own JSON-schema grammar). Strict thinking's ban on
  `<tool_call>` and EOS while the runtime believes the model is reasoning is not applied: a
  script may put a call inside its reasoning (the failure mode seen in the wild), and a
  script that ends without
  `</think>` under thinking stops with EOS where the real runtime would go on to the budget
  or `max_tokens` (e.g. a continuation with enable_thinking true whose prompt already
  closed the reasoning).
- One token per decode step (no speculative multi-token steps); `n` must be 1; one rid.
- `/health` does not run a generation (latency configurable), and never goes unhealthy on
  its own; `/server_info` holds a few fields only; `prompt_tokens_details.image_tokens` and
  every token count are approximations; prefix reuse is per token (page 1) by default;
  `SimConfig.mamba_cache` models the hybrid model's reuse up to kept state snapshots
  (`hybrid_cache.py`; not chunked prefill, pool-size eviction or speculative decoding).
- Faults (429, cut connections, malformed chunks) are things a proxy or a crashing runtime
  produces; SGLang itself does not emit them this way.
- Control endpoints under `/sim/` do not exist in SGLang.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.sglang_sim.script import Fault, Rule, SimConfig

if TYPE_CHECKING:
    from tests.sglang_sim.server import RecordedRequest, Simulator
    from tests.sglang_sim.testing import running_simulator, spawn_simulator

__all__ = [
    "Fault",
    "RecordedRequest",
    "Rule",
    "SimConfig",
    "Simulator",
    "running_simulator",
    "spawn_simulator",
]

_LAZY = {
    "RecordedRequest": "tests.sglang_sim.server",
    "Simulator": "tests.sglang_sim.server",
    "running_simulator": "tests.sglang_sim.testing",
    "spawn_simulator": "tests.sglang_sim.testing",
}


def __getattr__(name: str) -> Any:
    # The server pulls in FastAPI and uvicorn; import it only when asked for.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
