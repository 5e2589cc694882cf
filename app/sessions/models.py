"""The session store's data shapes.

On the hot path messages stay plain dicts in OpenAI chat form, serialised with orjson; a
pydantic model (`StoredMessage`) checks them only where they cross the API boundary.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    arguments: str


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class StoredMessage(BaseModel):
    """One message of a session as stored: OpenAI chat form plus `meta`.

    `content` is text or a list of parts; each part is a dict with a string `type` (image parts
    are references such as `{"type": "image_ref", "sha256": "…"}`, kept as given).
    `reasoning_content` is the model's thinking, never mixed into `content`. Unknown fields are
    kept, so a stored message round-trips unchanged.
    """

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    meta: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_role_fields(self) -> StoredMessage:
        if isinstance(self.content, list):
            for index, part in enumerate(self.content):
                if not isinstance(part.get("type"), str):
                    raise ValueError(f"content part {index} has no string 'type'")
        if self.role != "assistant" and (self.reasoning_content or self.tool_calls):
            raise ValueError("only assistant messages carry reasoning_content or tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The dict the store keeps: fields that are set, None left out."""
        return self.model_dump(mode="json", exclude_none=True)
