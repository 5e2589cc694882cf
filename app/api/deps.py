"""The typed dependencies routers take: the process's `Services` (built once, in the app's
lifespan) and the caller's owner id."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.auth import authenticate
from app.services import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
Owner = Annotated[str, Depends(authenticate)]
