"""Reading SGLang 0.5.23's `/metrics` gauges (`app.runtime.metrics`)."""

from __future__ import annotations

import pytest

from app.runtime.metrics import RuntimeMetrics, parse_metrics

# The shape SGLang's multiprocess Prometheus exposition gives with priority scheduling on
# (labels from metrics_collector.py `SchedulerMetricsCollectorContext.build`).
BASE = 'engine_type="unified",model_name="q",moe_ep_rank="0",pp_rank="0",tp_rank="0"'
PRIORITY_TEXT = f"""# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{{{BASE},priority=""}} 5.0
sglang:num_running_reqs{{{BASE},priority="0"}} 3.0
sglang:num_running_reqs{{{BASE},priority="10"}} 2.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{{{BASE},priority=""}} 7.0
sglang:num_queue_reqs{{{BASE},priority="0"}} 7.0
sglang:spec_accept_length{{{BASE},priority=""}} 2.75
sglang:token_usage{{{BASE},priority=""}} 0.25
sglang:cache_hit_rate{{{BASE},priority=""}} 0.5
sglang:gen_throughput{{{BASE},priority=""}} 123.5
sglang:num_requests_total{{engine_type="unified",model_name="q"}} 99.0
"""


def test_priority_breakdowns_are_left_out_of_the_totals() -> None:
    assert parse_metrics(PRIORITY_TEXT) == RuntimeMetrics(
        running_requests=5,
        queued_requests=7,
        spec_accept_length=2.75,
        token_usage=0.25,
        cache_hit_rate=0.5,
        gen_throughput=123.5,
    )


def test_data_parallel_replicas_sum_counts_and_average_ratios() -> None:
    text = "\n".join(
        [
            f'sglang:num_running_reqs{{{BASE},dp_rank="0"}} 4.0',
            f'sglang:num_running_reqs{{{BASE},dp_rank="1"}} 6.0',
            f'sglang:token_usage{{{BASE},dp_rank="0"}} 0.2',
            f'sglang:token_usage{{{BASE},dp_rank="1"}} 0.4',
            # another tensor rank of replica 1 repeating its figure (all schedulers report)
            'sglang:num_running_reqs{dp_rank="1",tp_rank="1"} 6.0',
        ]
    )
    metrics = parse_metrics(text)
    assert metrics.running_requests == 10
    assert metrics.token_usage == pytest.approx(0.3)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not prometheus at all\n\x00\xff",
        "sglang:num_running_reqs{broken 1.0",
        "sglang:num_running_reqs{} notanumber",
        "sglang:num_running_reqs NaN",
    ],
)
def test_unreadable_or_missing_gauges_are_none(text: str) -> None:
    assert parse_metrics(text) == RuntimeMetrics()


def test_a_series_without_labels_counts() -> None:
    assert parse_metrics("sglang:num_queue_reqs 3\n").queued_requests == 3
