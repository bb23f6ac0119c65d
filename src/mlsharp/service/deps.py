"""Request dependencies shared by the routers: the service state, auth and rate limit."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mlsharp.service.edge import authenticate, checked_owner, client_address
from mlsharp.service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    """The app's :class:`ServiceState`."""
    return request.app.state.mlsharp


State = Annotated[ServiceState, Depends(get_state)]


def _client_identity(request: Request, state: ServiceState) -> str | None:
    """Check the API key (if keys are configured) and the rate limit; returns the owner.

    A request with a body was already checked before its body was read
    (:class:`~mlsharp.service.edge.AuthBeforeBodyMiddleware`): its answer is reused.
    """
    checked = checked_owner(request.scope)
    if checked is not None:
        return checked[0]
    return authenticate(state, request.headers, client_address(request.scope))


def require_client(request: Request, state: State) -> str | None:
    """Dependency of protected routes: the caller's identity (``None`` when open)."""
    return _client_identity(request, state)


def guard_health(request: Request, state: State) -> None:
    """Dependency of /v1/health and /v1/ready: protected only if configured."""
    if state.settings.protect_health:
        _client_identity(request, state)


def guard_metrics(request: Request, state: State) -> None:
    """Dependency of /metrics: protected only if configured."""
    if state.settings.protect_metrics:
        _client_identity(request, state)


Owner = Annotated[str | None, Depends(require_client)]


def base_url(state: ServiceState) -> str:
    """Prefix of links in responses: the configured public URL, else relative links."""
    return state.settings.public_url or ""
