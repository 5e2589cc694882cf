"""What every cascade settings class shares: `CASCADE_*` environment variables, frozen values,
and one way of turning a validation failure into a `ConfigError` that names each bad variable
(never its value, which may be a secret)."""

from __future__ import annotations

from typing import Any, Self

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import ConfigError


class CascadeSettings(BaseSettings):
    """Base of the settings classes; field `x` is read from env `CASCADE_X`."""

    model_config = SettingsConfigDict(
        env_prefix="CASCADE_", env_file=None, extra="ignore", frozen=True
    )

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Read and validate; raise `ConfigError` naming every bad variable."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise config_error(exc) from None


def config_error(exc: ValidationError) -> ConfigError:
    problems = []
    for err in exc.errors(include_input=False):
        loc = str(err["loc"][0]) if err["loc"] else ""
        var = f"CASCADE_{loc.upper()}" if loc else "settings"
        # err["msg"] describes the rule, never the value.
        problems.append(f"{var}: {err['msg']}")
    return ConfigError("invalid configuration: " + "; ".join(problems))


def split_csv(value: object) -> object:
    """A comma-separated env value → list of non-empty stripped items (others unchanged)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value
