"""The typed dependencies routers take: the process's `Services` (built once, in the app's
lifespan) and the caller's owner id."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.auth import authenticate
from app.services import Services


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    """Async on purpose: FastAPI runs a plain `def` dependency in a worker thread per request."""
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]
Owner = Annotated[str, Depends(authenticate)]
