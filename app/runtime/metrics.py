"""The few gauges of SGLang's Prometheus `/metrics` that cascade shows (its status page).

SGLang 0.5.23 (`sglang/srt/observability/metrics_collector.py`, `SchedulerMetricsCollector`)
exports one series per scheduler, labelled `model_name`, `engine_type`, `tp_rank`, `pp_rank`,
`moe_ep_rank`, plus `dp_rank` with data parallelism and `priority` with priority scheduling.
With priority scheduling, `num_running_reqs` and `num_queue_reqs` carry their total under
`priority=""` and a breakdown under `priority="<n>"`.

Contracts:
- Only gauge samples named in `GAUGES` are read; every other line is ignored, and a line that
  does not parse is skipped, so no text from the runtime can make this raise.
- Per-priority breakdowns are left out (the `priority=""` series is the total).
- One series per data-parallel replica counts: among series of the same `dp_rank`, the first
  seen is kept (other tensor/pipeline ranks repeat it when every scheduler reports).
- Request counts are summed over replicas; ratios and lengths are averaged over them.
- A gauge with no sample is None (e.g. `spec_accept_length` without speculative decoding).
"""

from __future__ import annotations

import re

from pydantic import BaseModel

# metric name → field of `RuntimeMetrics`
GAUGES = {
    "sglang:num_running_reqs": "running_requests",
    "sglang:num_queue_reqs": "queued_requests",
    "sglang:spec_accept_length": "spec_accept_length",
    "sglang:token_usage": "token_usage",
    "sglang:cache_hit_rate": "cache_hit_rate",
    "sglang:gen_throughput": "gen_throughput",
}
_SUMMED = frozenset({"running_requests", "queued_requests", "gen_throughput"})

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


class RuntimeMetrics(BaseModel):
    """The runtime's load, as its `/metrics` gauges said at one moment."""

    running_requests: float | None = None
    queued_requests: float | None = None
    spec_accept_length: float | None = None
    token_usage: float | None = None
    cache_hit_rate: float | None = None
    gen_throughput: float | None = None


def _labels(text: str | None) -> dict[str, str]:
    return {m.group("key"): m.group("value") for m in _LABEL.finditer(text or "")}


def parse_metrics(text: str) -> RuntimeMetrics:
    """The gauges of `GAUGES` from Prometheus text exposition (see the module's contracts)."""
    per_replica: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.startswith("sglang:"):
            continue
        match = _SAMPLE.match(line)
        if match is None or match.group("name") not in GAUGES:
            continue
        labels = _labels(match.group("labels"))
        if labels.get("priority", "") != "":
            continue
        try:
            value = float(match.group("value"))
        except ValueError:
            continue
        if value != value:  # NaN: no reading yet
            continue
        replicas = per_replica.setdefault(GAUGES[match.group("name")], {})
        replicas.setdefault(labels.get("dp_rank", ""), value)
    values: dict[str, float] = {}
    for field, replicas in per_replica.items():
        total = sum(replicas.values())
        values[field] = total if field in _SUMMED else total / len(replicas)
    return RuntimeMetrics.model_validate(values)
