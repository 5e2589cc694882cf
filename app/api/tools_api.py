"""`GET /v1/tools`: the server-side tools a caller may use, with their schemas."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from app.api.auth import authenticate
from app.api.deps import ServicesDep

router = APIRouter()


@router.get("/v1/tools", dependencies=[Depends(authenticate)])
async def list_tools(services: ServicesDep) -> dict[str, Any]:
    registry, policy = services.registry, services.policy
    data = []
    for schema in registry.schemas_for(policy):
        name = schema["function"]["name"]
        tool = registry.get(name)
        assert tool is not None
        data.append(
            {
                "object": "tool",
                **schema,
                "side_effect": tool.side_effect,
                "requires_confirmation": policy.needs_confirmation(tool),
                "write_allowed": tool.side_effect == "read" or policy.allows_write(name),
            }
        )
    return {"object": "list", "data": data}
