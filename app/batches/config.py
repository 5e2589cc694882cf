"""Settings of batches, the job queue and workers, read from `CASCADE_*` environment variables.

Kept apart from `app.config.Settings` so the batch code can be built and tested on its own; the
variable names share the `CASCADE_` prefix so one environment configures everything.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from app.settings_base import CascadeSettings
from templates import TEMPLATES_DIR

MB = 1024 * 1024
REPO_TEMPLATES = TEMPLATES_DIR


class BatchSettings(CascadeSettings):
    """Field `x` is read from env `CASCADE_X`."""

    key_prefix: str = Field(
        default="cascade", min_length=1, description="Namespace of every Redis key written."
    )
    batch_metrics_interval: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between a worker's pushes of its metrics to Redis (for /metrics).",
    )

    # --- workers ---
    batch_inflight: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description=(
            "Batch items one worker keeps in flight. Unset: the runtime's running slots "
            "(from /server_info) times CASCADE_BATCH_INFLIGHT_FACTOR, or 32."
        ),
    )
    batch_inflight_factor: float = Field(
        default=1.25,
        ge=1.0,
        le=8.0,
        description="In-flight items per runtime slot when the in-flight limit is derived.",
    )
    batch_max_attempts: int = Field(
        default=3, ge=1, le=20, description="Tries of a failing item before it is dead-lettered."
    )
    batch_retry_base: float = Field(
        default=2.0, gt=0, description="Seconds before the first retry (doubles each try)."
    )
    batch_retry_max: float = Field(default=120.0, gt=0, description="Longest retry delay, s.")
    batch_claim_idle: float = Field(
        default=60.0,
        gt=0,
        description="Seconds an item may sit with a silent worker before another takes it over.",
    )
    batch_max_redeliveries: int = Field(
        default=3,
        ge=0,
        description="Extra deliveries (worker crashes) of one item before it is dead-lettered.",
    )
    batch_drain_grace: float = Field(
        default=25.0, ge=0, description="Seconds a stopping worker lets in-flight items finish."
    )
    batch_block_ms: int = Field(
        default=500, ge=10, description="Longest wait for new items in one queue read, ms."
    )
    batch_priority: int | None = Field(
        default=None,
        description=(
            "SGLang `priority` sent with batch items. Unset: derived from the runtime's "
            "/server_info (only when priority scheduling is on and chat requests have a "
            "default priority to rank below)."
        ),
    )
    batch_priority_offset: int = Field(
        default=100,
        ge=1,
        description="How far below interactive chat batch items rank when derived.",
    )
    response_cancel_poll: float = Field(
        default=0.2,
        gt=0,
        description=(
            "Seconds between a worker's checks that the background response it runs was not "
            "cancelled (a cancel aborts the runtime request within about this long)."
        ),
    )
    runtime_wait_interval: float = Field(
        default=2.0, gt=0, description="Seconds between runtime health checks while it is down."
    )

    # --- the coordinator (inside the API process) ---
    batch_poll_interval: float = Field(
        default=0.2, gt=0, description="Seconds between coordinator passes over active batches."
    )
    batch_feed_window: int = Field(
        default=512,
        ge=1,
        description="Items of one batch queued but not finished at any time (backpressure).",
    )
    batch_feed_bytes: int = Field(
        default=64 * MB, ge=1024, description="Bytes of one batch's queued item bodies at most."
    )
    batch_max_line_bytes: int = Field(
        default=32 * MB, ge=1024, description="Longest input line (a request with inline images)."
    )
    batch_max_lines: int = Field(default=1_000_000, ge=1, description="Requests in one batch.")
    batch_max_errors_listed: int = Field(
        default=1000, ge=0, description="Validation errors listed in the batch object."
    )
    batch_retention_days: int = Field(
        default=30, ge=1, description="Days a finished batch object is kept."
    )
    batch_lease_seconds: float = Field(
        default=10.0, gt=0, description="Coordinator lease; another API process takes over after."
    )

    # --- jobs and reports ---
    templates_dir: Path = Field(
        default=REPO_TEMPLATES, description="Directory of prompt and report templates."
    )
    job_max_images: int = Field(default=100_000, ge=1, description="Images in one job.")
    job_max_questions: int = Field(default=32, ge=1, description="Questions in one job.")

    @model_validator(mode="after")
    def _check(self) -> BatchSettings:
        if self.batch_retry_base > self.batch_retry_max:
            raise ValueError("CASCADE_BATCH_RETRY_BASE must not exceed CASCADE_BATCH_RETRY_MAX")
        return self


def load_batch_settings(**overrides: object) -> BatchSettings:
    """Read and validate; `ConfigError` naming every bad variable (never its value)."""
    return BatchSettings.load(**overrides)
