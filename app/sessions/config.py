"""Settings of the session and idempotency stores, read from `CASCADE_*` environment variables.

Kept apart from `app.config.Settings` so the stores can be built and tested on their own; the
variable names share the `CASCADE_` prefix so one environment configures both.
"""

from __future__ import annotations

from pydantic import Field

from app.settings_base import CascadeSettings


class SessionSettings(CascadeSettings):
    """Field `x` is read from env `CASCADE_X`."""

    session_ttl_days: int = Field(
        default=30, ge=1, description="Days a session lives after it was last read or written."
    )
    response_ttl_days: int = Field(
        default=30, ge=1, description="Days a stored response of the Responses API is kept."
    )
    turn_lock_wait: float = Field(
        default=2.0,
        ge=0,
        description="Seconds a second turn on a session waits for the first before a 409.",
    )
    turn_lock_ttl: float = Field(
        default=6.0,
        gt=0,
        description=(
            "Seconds a turn lock outlives a holder that crashed or lost Redis (renewed every "
            "ttl/3 while held); short, so a lock nobody could release frees the session soon."
        ),
    )
    idempotency_ttl_hours: int = Field(
        default=24, ge=1, description="Hours a completed request's result is kept for retries."
    )
    idempotency_pending_ttl: float = Field(
        default=3600.0,
        gt=0,
        description=(
            "Seconds an unfinished request keeps its Idempotency-Key reserved; bounds how long a "
            "crashed request blocks retries with the same key."
        ),
    )
    idempotency_wait: float = Field(
        default=2.0,
        ge=0,
        description="Seconds a retry waits for the first request with its key before a 409.",
    )
    ledger_ttl_days: int = Field(
        default=7,
        ge=1,
        description=(
            "Days the ledger keeps a stateless turn's reasoning and tool steps after they were "
            "last used (app/sessions/ledger.py)."
        ),
    )
    ledger_pause_ttl: float = Field(
        default=600.0,
        gt=0,
        description=(
            "Seconds a write call paused in a stateless chat waits for the user's plain-text "
            "yes; later, the yes runs nothing."
        ),
    )
    key_prefix: str = Field(
        default="cascade", min_length=1, description="Namespace of every Redis key written."
    )

    @property
    def session_ttl_ms(self) -> int:
        return self.session_ttl_days * 86_400_000

    @property
    def response_ttl_ms(self) -> int:
        return self.response_ttl_days * 86_400_000

    @property
    def ledger_ttl_ms(self) -> int:
        return self.ledger_ttl_days * 86_400_000

    @property
    def ledger_pause_ttl_ms(self) -> int:
        return max(1, round(self.ledger_pause_ttl * 1000))

    @property
    def idempotency_ttl_ms(self) -> int:
        return self.idempotency_ttl_hours * 3_600_000


def load_session_settings(**overrides: object) -> SessionSettings:
    """Read and validate the settings; `ConfigError` names every bad variable (not its value)."""
    return SessionSettings.load(**overrides)
