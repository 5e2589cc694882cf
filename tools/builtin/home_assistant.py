"""`home_assistant_state` (read) and `home_assistant_call` (write): Home Assistant's REST API.

- State: `GET /api/states` (all entities, optionally one domain) or `GET /api/states/<id>`;
  only entities matching the operator's read patterns (`CASCADE_HOME_ASSISTANT_READ`, globs,
  default all) are shown.
- Call: `POST /api/services/<domain>/<service>` with `{"entity_id": ..., **data}`; only
  services on the operator's allow-list (`CASCADE_HOME_ASSISTANT_ALLOW`: `domain.service` or
  `domain.*`) may be called. It is a `write` tool; by default every call needs the user's OK.

The long-lived access token is sent as a bearer header and appears nowhere else: not in tool
output, error messages or logs. Domain, service and entity names are checked against Home
Assistant's own syntax before they are put into a URL path.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator

from tools.builtin._http import request_json
from tools.registry import Tool, ToolArgs, ToolContext, ToolError, tool

_SLUG = r"^[a-z0-9_]+$"
_ENTITY = r"^[a-z0-9_]+\.[a-z0-9_]+$"
_SERVICE = "Home Assistant"


class HomeAssistantStateArgs(ToolArgs):
    entity_id: str | None = Field(
        default=None,
        pattern=_ENTITY,
        description="One entity, e.g. light.kitchen. Default: list entities.",
    )
    domain: str | None = Field(
        default=None,
        pattern=_SLUG,
        description="When listing: only entities of this domain, e.g. light or sensor.",
    )


class HomeAssistantCallArgs(ToolArgs):
    domain: str = Field(pattern=_SLUG, description="Service domain, e.g. light.")
    service: str = Field(pattern=_SLUG, description="Service name, e.g. turn_on.")
    entity_id: list[Annotated[str, Field(pattern=_ENTITY)]] | None = Field(
        default=None, max_length=100, description='Target entities, e.g. ["light.kitchen"].'
    )
    data: dict[str, Any] | None = Field(
        default=None, description='Other service data, e.g. {"brightness_pct": 50}.'
    )

    @field_validator("entity_id", mode="before")
    @classmethod
    def _one_entity(cls, value: object) -> object:
        # A single id where a list is expected is what a model most often sends.
        return [value] if isinstance(value, str) else value


def service_allowed(allow: Sequence[str], domain: str, service: str) -> bool:
    """Whether `domain.service` matches an allow-list entry (`domain.service` or `domain.*`)."""
    name = f"{domain}.{service}"
    return any(entry == name or entry == f"{domain}.*" for entry in allow)


def _readable(patterns: Sequence[str], entity_id: str) -> bool:
    return any(fnmatch.fnmatchcase(entity_id, p) for p in patterns)


def make_home_assistant_tools(
    base_url: str,
    token: SecretStr,
    *,
    allow: Sequence[str] = (),
    read: Sequence[str] = ("*",),
    confirm: bool = True,
    timeout: float = 10.0,
) -> list[Tool]:
    """The state tool, plus the call tool when `allow` names at least one service."""
    base = base_url.rstrip("/")
    allow = tuple(allow)
    read = tuple(read)
    http_timeout = max(0.1, timeout * 0.8)

    def headers() -> dict[str, str]:
        return {
            "Authorization": f"Bearer {token.get_secret_value()}",
            "Content-Type": "application/json",
        }

    @tool(name="home_assistant_state", timeout=timeout)
    async def home_assistant_state(args: HomeAssistantStateArgs, ctx: ToolContext) -> str:
        """Read the state of smart-home devices and sensors from Home Assistant: one entity
        (with its attributes) or a list of entities and their states."""
        if args.entity_id is not None:
            if not _readable(read, args.entity_id):
                raise ToolError(f"reading {args.entity_id} is not allowed by the operator")
            _, state = await request_json(
                "GET",
                f"{base}/api/states/{args.entity_id}",
                service=_SERVICE,
                http_timeout=http_timeout,
                headers=headers(),
                status_hints={404: f"Home Assistant has no entity {args.entity_id}"},
            )
            if not isinstance(state, dict):
                raise ToolError("Home Assistant sent an unexpected answer")
            return _describe_entity(state)
        _, states = await request_json(
            "GET",
            f"{base}/api/states",
            service=_SERVICE,
            http_timeout=http_timeout,
            headers=headers(),
        )
        if not isinstance(states, list):
            raise ToolError("Home Assistant sent an unexpected answer")
        rows = []
        for state in states:
            if not isinstance(state, dict):
                continue
            entity_id = str(state.get("entity_id", ""))
            if args.domain and not entity_id.startswith(args.domain + "."):
                continue
            if _readable(read, entity_id):
                rows.append(_describe_row(state))
        if not rows:
            return "No entities" + (f" in domain {args.domain}." if args.domain else ".")
        return f"{len(rows)} entities:\n" + "\n".join(sorted(rows))

    call_description = (
        "Control smart-home devices through Home Assistant by calling a service, e.g. domain "
        'light, service turn_on, entity_id ["light.kitchen"]. Services you may call: '
        + ", ".join(allow)
        + "."
    )

    @tool(
        name="home_assistant_call",
        description=call_description,
        side_effect="write",
        timeout=timeout,
    )
    async def home_assistant_call(args: HomeAssistantCallArgs, ctx: ToolContext) -> str:
        if not service_allowed(allow, args.domain, args.service):
            allowed = ", ".join(allow)
            raise ToolError(
                f"calling {args.domain}.{args.service} is not allowed; allowed: {allowed}"
            )
        body: dict[str, Any] = dict(args.data or {})
        if args.entity_id:
            body["entity_id"] = args.entity_id
        _, changed = await request_json(
            "POST",
            f"{base}/api/services/{args.domain}/{args.service}",
            service=_SERVICE,
            http_timeout=http_timeout,
            headers=headers(),
            json_body=body,
            status_hints={
                400: (
                    f"Home Assistant rejected the call to {args.domain}.{args.service} "
                    "(unknown service or invalid data)"
                ),
                404: f"Home Assistant has no service {args.domain}.{args.service}",
            },
        )
        summary = f"Called {args.domain}.{args.service}."
        if isinstance(changed, list):
            rows = [
                _describe_row(s)
                for s in changed
                if isinstance(s, dict) and _readable(read, str(s.get("entity_id", "")))
            ]
            summary += " Changed: " + ("; ".join(rows) if rows else "nothing reported") + "."
        return summary

    tools: list[Tool] = [home_assistant_state]
    if allow:
        tools.append(home_assistant_call.with_options(requires_confirmation=confirm))
    return tools


def _describe_row(state: dict[str, Any]) -> str:
    attributes = state.get("attributes")
    if not isinstance(attributes, dict):
        attributes = {}
    name = attributes.get("friendly_name")
    unit = attributes.get("unit_of_measurement")
    text = f"{state.get('entity_id')}: {state.get('state')}"
    if unit:
        text += f" {unit}"
    if name:
        text += f" ({name})"
    return text


def _describe_entity(state: dict[str, Any]) -> str:
    attributes = state.get("attributes")
    lines = [_describe_row(state)]
    if state.get("last_changed"):
        lines.append(f"last changed: {state['last_changed']}")
    if isinstance(attributes, dict) and attributes:
        lines.append("attributes: " + json.dumps(attributes, ensure_ascii=False, sort_keys=True))
    return "\n".join(lines)
