"""The Redis key layout of batches and the job queue.

Per-batch keys carry the batch id as a hash tag (`{batch_…}`) so they share a Redis Cluster
slot. The queue's keys (a stream of batch items and one of background responses, read first,
each with the consumer group `workers`, and the delayed-retry set) share the tag `{queue}`: the
scripts that move entries between them (a due retry back into the stream, an entry acknowledged
and queued again) need one slot. The queue is therefore one slot's load on a cluster: every
claim, touch and acknowledgement goes to the node holding it (batch state, results and sessions
spread over the others). No script or transaction touches a batch's keys and the queue's
together (`app.batches.queue` says how the steps are ordered instead). The owner index and the
set of active batches are keys of their own. Only `app.batches.queue` touches the queue's keys
and group.
"""

from __future__ import annotations

import re

BATCH_ID_RE = re.compile(r"batch_[0-9a-f]{24}")
GROUP = "workers"  # the job queue's one consumer group


class BatchKeys:
    """Builds key names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def batch(self, batch_id: str) -> str:
        """Hash: the batch object's fields, counts and feeding state."""
        return f"{self.prefix}:batch:{{{batch_id}}}"

    def results(self, batch_id: str) -> str:
        """Hash: custom_id → the item's one visible result (written once, HSETNX)."""
        return f"{self.prefix}:batch:{{{batch_id}}}:results"

    def invalid(self, batch_id: str) -> str:
        """Hash: input line number → the validation error of that line."""
        return f"{self.prefix}:batch:{{{batch_id}}}:invalid"

    def running(self, batch_id: str) -> str:
        """Hash: custom_id → name of the worker running it right now."""
        return f"{self.prefix}:batch:{{{batch_id}}}:running"

    def starts(self, batch_id: str) -> str:
        """Hash: custom_id → how many times a worker started it (crash detection)."""
        return f"{self.prefix}:batch:{{{batch_id}}}:starts"

    def images(self, batch_id: str) -> str:
        """Set: sha256 of the stored images the batch's items used (kept with the batch: the
        thumbnail endpoint serves these and no others)."""
        return f"{self.prefix}:batch:{{{batch_id}}}:images"

    def item_keys(self, batch_id: str) -> list[str]:
        """The per-item bookkeeping of a batch, dropped once its files are written."""
        return [
            self.results(batch_id),
            self.invalid(batch_id),
            self.running(batch_id),
            self.starts(batch_id),
        ]

    def owner_index(self, owner: str) -> str:
        """Sorted set: the owner's batch ids scored by creation time (microseconds)."""
        return f"{self.prefix}:owner:{owner}:batches"

    def active(self) -> str:
        """Set: ids of batches not yet in a final state (the coordinator's work list)."""
        return f"{self.prefix}:batches:active"

    def stream(self) -> str:
        """Stream: queued items; consumer group `workers`."""
        return f"{self.prefix}:{{queue}}:items"

    def responses(self) -> str:
        """Stream: queued background responses (the priority lane); consumer group `workers`."""
        return f"{self.prefix}:{{queue}}:responses"

    def delayed(self) -> str:
        """Sorted set: items waiting for a retry, scored by the time they are due."""
        return f"{self.prefix}:{{queue}}:delayed"

    def queue_stats(self) -> str:
        """Hash: counts the queue keeps (`retried`, `dead`: items parked for a retry, items
        dead-lettered), for the metrics."""
        return f"{self.prefix}:queue:stats"

    def coordinator_lease(self) -> str:
        """String: the API process that currently coordinates batches."""
        return f"{self.prefix}:batches:coordinator"

    def worker(self, name: str) -> str:
        """String with a TTL: a live worker's heartbeat."""
        return f"{self.prefix}:workers:{name}"
