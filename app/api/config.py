"""Settings of the HTTP server itself: connection and body limits that keep slow or hostile
clients from exhausting the API. Field `x` is read from env `CASCADE_X`."""

from __future__ import annotations

from pydantic import Field

from app.settings_base import CascadeSettings

MB = 1024 * 1024


class HttpSettings(CascadeSettings):
    http_header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a connection may take to send a request's headers.",
    )
    http_body_grace: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a request body may take before the minimum rate applies.",
    )
    http_body_min_rate: int = Field(
        default=1024,
        ge=1,
        description="Bytes per second a request body must average after the grace period.",
    )
    http_keepalive_timeout: int = Field(
        default=5, ge=1, description="Seconds an idle keep-alive connection is kept."
    )
    http_max_connections: int = Field(
        default=512, ge=1, description="Open client connections; more are refused at once."
    )
    http_max_json_body: int = Field(
        default=1 * MB, ge=1024, description="Largest JSON body of an endpoint without images."
    )
    http_max_chat_body: int | None = Field(
        default=None,
        ge=1024,
        description="Largest chat/job body; unset = room for the per-request image limit as "
        "base64 plus 4 MiB of text.",
    )
