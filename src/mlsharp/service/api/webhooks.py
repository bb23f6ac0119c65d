"""``/v1/webhooks``: register URLs that receive signed ``job.succeeded``/``job.failed`` events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool

from mlsharp.service.api.jobs import _ERRORS
from mlsharp.service.deps import Owner, State
from mlsharp.service.schemas import (
    AttemptPublic,
    DeliveryPublic,
    WebhookCreate,
    WebhookCreated,
    WebhookPublic,
)
from mlsharp.service.views import iso
from mlsharp.service.webhooks import Delivery, Webhook

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def _public(hook: Webhook) -> WebhookPublic:
    return WebhookPublic(
        id=hook.id, url=hook.url, events=list(hook.events), created_at=iso(hook.created_at) or ""
    )


def _delivery(d: Delivery) -> DeliveryPublic:
    return DeliveryPublic(
        id=d.id,
        event=d.event,
        status=d.status,
        attempts=[
            AttemptPublic(
                number=a.number,
                at=iso(a.at) or "",
                status_code=a.status_code,
                error=a.error,
                duration_ms=round(a.duration_ms, 3),
            )
            for a in d.attempts
        ],
        next_attempt_at=iso(d.next_attempt_at),
        created_at=iso(d.created_at) or "",
    )


@router.post("", status_code=201, response_model=WebhookCreated, responses=_ERRORS)
async def create_webhook(body: WebhookCreate, state: State, owner: Owner) -> WebhookCreated:
    """Register a webhook; the answer holds the ``whsec_`` secret to verify signatures.

    With API keys, a webhook receives events of its own key's jobs only.

    URLs that resolve to loopback, private or link-local addresses are refused unless
    ``webhook_allow_private`` is set (SSRF protection).
    """
    hook = await run_in_threadpool(state.webhooks.create, body.url, body.events, owner)
    return WebhookCreated(**_public(hook).model_dump(), secret=hook.secret)


@router.get("", response_model=list[WebhookPublic], responses=_ERRORS)
def list_webhooks(state: State, owner: Owner) -> list[WebhookPublic]:
    """The caller's webhooks (secrets are not shown)."""
    return [_public(h) for h in state.webhooks.registered(owner)]


@router.get("/{webhook_id}", response_model=WebhookPublic, responses=_ERRORS)
def get_webhook(webhook_id: str, state: State, owner: Owner) -> WebhookPublic:
    """One webhook."""
    return _public(state.webhooks.get(webhook_id, owner))


@router.delete("/{webhook_id}", status_code=204, responses=_ERRORS)
def delete_webhook(webhook_id: str, state: State, owner: Owner) -> Response:
    """Unregister a webhook; its pending deliveries are dropped."""
    state.webhooks.delete(webhook_id, owner)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=list[DeliveryPublic], responses=_ERRORS)
def list_deliveries(
    webhook_id: str,
    state: State,
    owner: Owner,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[DeliveryPublic]:
    """Recent deliveries to the webhook, newest first, with every attempt."""
    return [_delivery(d) for d in state.webhooks.deliveries(webhook_id, limit, owner)]
