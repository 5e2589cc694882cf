"""What the simulated model says and how the simulated runtime behaves: rules, faults, config.

A `Rule` scripts the raw text the "model" emits for matching requests; a `Fault` makes the
runtime misbehave instead (or part-way through); `SimConfig` holds the launch-time settings
that the real runtime takes from its command line.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DEFAULT_ANSWER", "DEFAULT_REASONING", "Fault", "FaultKind", "Rule", "SimConfig"]

FaultKind = Literal["http_500", "http_429", "hang", "cut_stream", "malformed_chunk"]

# What the model says when no rule matches (reasoning only when thinking is on).
DEFAULT_REASONING = "The user sent a message. A short reply is enough.\n"
DEFAULT_ANSWER = "This is a simulated answer."


class Fault(BaseModel):
    """A way for the runtime to fail, fired `times` times before the rule behaves normally.

    - `http_500`: an SGLang-shaped 500 error body, before any generation.
    - `http_429`: a 429 with a `Retry-After` header (`retry_after` seconds, default 1).
    - `hang`: no answer at all until the client goes away (or the simulator stops).
    - `cut_stream`: the connection is dropped after `after_chunks` SSE chunks, without
      `[DONE]` (non-streaming: after the headers, mid-body).
    - `malformed_chunk`: after `after_chunks` chunks a chunk that is not valid JSON is sent,
      then the stream goes on normally (non-streaming: the body is not valid JSON).
    """

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    retry_after: float | None = None
    after_chunks: int = Field(default=0, ge=0)
    times: int = Field(default=1, ge=1)


class Rule(BaseModel):
    """A scripted answer.

    `match` is a substring of the last user message's text (None matches any request);
    `continuation` restricts the rule to `continue_final_message` requests (True), to fresh
    ones (False) or neither (None). `output` is the RAW text the model emits after the
    generation prompt, as Qwen3.6 would: with thinking on it starts inside the reasoning
    (no `<think>`) and contains `</think>`; tool calls are `<tool_call>` XML blocks.
    `ttft`/`tpot` override the config's latencies for this rule. `times` is how many
    generations the rule serves before it expires (None = forever); fault firings do not
    count against it. `ignore_response_format` lets the output through unshaped by the
    request's JSON grammar (a runtime that does not apply it; `json_grammar.py`).
    """

    model_config = ConfigDict(extra="forbid")

    match: str | None = None
    continuation: bool | None = None
    output: str
    fault: Fault | None = None
    ttft: float | None = Field(default=None, ge=0)
    tpot: float | None = Field(default=None, ge=0)
    times: int | None = Field(default=None, ge=1)
    ignore_response_format: bool = False


class SimConfig(BaseModel):
    """Launch-time settings of the simulated runtime (mirrors the real launch flags).

    - `model_name`/`model_path`: `--served-model-name` / `--model-path`.
    - `ignore_thinking_budget`: reproduce sglang issue #25536 (budget not enforced).
    - `ttft`/`tpot`: seconds before the first token / between tokens.
    - `max_running`: `--max-running-requests`; the rest wait in the queue.
    - `default_template_kwargs`: `--default-chat-template-kwargs`.
    - `api_key`: `--api-key` (Bearer check; health, ready and metrics bypass it).
    - `enable_cache_report`: `--enable-cache-report` (`prompt_tokens_details.cached_tokens`).
    - `cache_page_size`: `--page-size`; prefix-cache hits are whole pages (1 = per token).
    - `context_length`: `--context-length`.
    - `healthy_after_first_generation`: `/health` and `/ready` answer 503 until a generation
      has completed, as a runtime does before its warm-up request finished.
    - `health_check_latency`: seconds `/health` takes (the real one waits >= 1 s for a
      one-token generation; 0 keeps tests fast).

    What `/server_info`, `/model_info` and `/metrics` report (for `cascade doctor`):
    - `reasoning_parser`/`tool_call_parser`: the parser names reported; the simulator's own
      parsing is always `qwen3` / `qwen3_coder` whatever these say.
    - `enable_strict_thinking`, `enable_priority_scheduling`, `speculative_algorithm` (None =
      off): the launch flags reported; they do not change how the simulator behaves.
    - `spec_accept_length`: `sglang:spec_accept_length` in `/metrics` (0 when speculative
      decoding is off).
    - `max_total_tokens`: `--max-total-tokens`, the KV pool `sglang:token_usage` is a share of.
    - `version`: the SGLang version reported by `/server_info`.
    - `model_info_served_model_name`: False omits `served_model_name` from `/model_info`, as
      SGLang 0.5.15 does.
    - `reject_images`: every request carrying an image gets a 400 (a runtime without vision).
    - `mamba_cache`: the hybrid model's radix cache (`--mamba-radix-cache-strategy
      extra_buffer`, `tests.sglang_sim.hybrid_cache`): a prefix is reused only up to a kept
      recurrent-state snapshot, on `cache_page_size`'s grid (at least 64). Off: per-page reuse
      of any cached prefix, as for a pure-attention model.
    - `mamba_track_interval`: `--mamba-track-interval`, the decode snapshot interval; a
      multiple of `cache_page_size`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model_name: str = "qwen3.6-27b-cascade"
    model_path: str = "natfii/Qwen3.6-27B-VLM-Cascade"
    ignore_thinking_budget: bool = False
    ttft: float = Field(default=0.0, ge=0)
    tpot: float = Field(default=0.0, ge=0)
    max_running: int = Field(default=48, ge=1)
    default_template_kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"enable_thinking": False}
    )
    api_key: str | None = None
    enable_cache_report: bool = True
    cache_page_size: int = Field(default=1, ge=1)
    context_length: int = Field(default=131072, ge=16)
    healthy_after_first_generation: bool = False
    health_check_latency: float = Field(default=0.0, ge=0)
    reasoning_parser: str = "qwen3"
    tool_call_parser: str = "qwen3_coder"
    enable_strict_thinking: bool = True
    enable_priority_scheduling: bool = True
    speculative_algorithm: str | None = "NEXTN"
    spec_accept_length: float = Field(default=2.5, ge=0)
    max_total_tokens: int = Field(default=262144, ge=1)
    version: str = "0.5.23"
    model_info_served_model_name: bool = True
    reject_images: bool = False
    # The hybrid (Mamba/GDN) prefix cache.
    mamba_cache: bool = False
    mamba_track_interval: int = Field(default=256, ge=1)

    @model_validator(mode="after")
    def _track_interval_on_pages(self) -> SimConfig:
        # server_args' mamba hook asserts this at launch.
        if self.mamba_cache and self.mamba_track_interval % self.cache_page_size:
            raise ValueError("mamba_track_interval must be a multiple of cache_page_size")
        return self
