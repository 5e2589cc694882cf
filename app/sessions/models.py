"""The session store's data shapes.

Messages stay plain dicts in OpenAI chat form, serialised with orjson; they are validated where
they enter cascade (`app.agent.protocol.check_messages`), not again on every read.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SessionOptions(BaseModel):
    """Model settings a session's turns run with unless a request overrides them."""

    model_config = ConfigDict(extra="forbid")

    thinking: bool | None = None
    thinking_budget: int | None = Field(default=None, ge=1)
    preserve_thinking: bool = False
    server_tools: list[str] | None = None


class SessionInfo(BaseModel):
    """A session's metadata; `version` counts the turns committed since it was created."""

    id: str
    owner: str
    title: str | None
    created_at: float
    updated_at: float
    options: SessionOptions
    message_count: int
    version: int
    forked_from: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)  # the Conversations API's metadata
