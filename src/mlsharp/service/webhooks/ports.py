"""``WebhookStore``: the storage primitives the webhook policy is written over.

An adapter keeps endpoints, deliveries and attempts, and makes each primitive atomic
(one SQLite transaction, one Redis transaction or script); every decision (what to send,
when to retry, how many attempts at once) is :mod:`~mlsharp.service.webhooks.dispatcher`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from mlsharp.service.outbox import OutboxEntry
from mlsharp.service.webhooks.model import Attempt, Claimed, Delivery, NewDelivery, Webhook


class WebhookStore(Protocol):
    """Endpoints, deliveries and attempts (SQLite: ``sqlite.py``; Redis: ``redis.py``)."""

    def add_webhook(self, hook: Webhook, *, max_per_owner: int) -> None:
        """Register ``hook`` unless its owner already has ``max_per_owner``
        (:func:`~mlsharp.service.webhooks.model.check_room`, in the same transaction)."""
        ...

    def webhooks(self, owner: str | None) -> list[Webhook]:
        """The webhooks of ``owner``, oldest first."""
        ...

    def webhook(self, webhook_id: str) -> Webhook | None:
        """One webhook, whoever owns it, or ``None``."""
        ...

    def remove_webhook(self, webhook_id: str) -> bool:
        """Forget a webhook with its deliveries; ``False`` if there was none."""
        ...

    def add_deliveries(self, deliveries: Sequence[NewDelivery]) -> None:
        """Create pending deliveries, due now (one transaction)."""
        ...

    def deliveries(self, webhook_id: str, limit: int) -> list[Delivery]:
        """The latest ``limit`` deliveries of a webhook with their attempts, newest first."""
        ...

    def claim(
        self,
        now: float,
        lease_until: float,
        *,
        skip_webhooks: Collection[str],
        skip_owners: Collection[str],
    ) -> Claimed | None:
        """Take the earliest delivery due at ``now`` whose webhook is not in
        ``skip_webhooks`` and whose owner (``""`` for none) is not in ``skip_owners``, and
        make it due again at ``lease_until`` (if the attempt never ends, e.g. the process
        dies, it is tried again then). Atomic across processes."""
        ...

    def record(
        self, delivery_id: str, attempt: Attempt, status: str, next_at: float | None
    ) -> None:
        """Add an attempt and set the delivery's status and next due time (nothing if
        the delivery was deleted meanwhile)."""
        ...

    def outbox(self, limit: int) -> list[OutboxEntry]:
        """The oldest ``limit`` outbox entries (events of jobs that ended)."""
        ...

    def fan_out(
        self, entry: OutboxEntry, make: Callable[[list[Webhook]], Sequence[NewDelivery]]
    ) -> int:
        """In one transaction: remove ``entry`` and add ``make(webhooks of its owner)``;
        how many deliveries that made (``0`` if another process took the entry first)."""
        ...

    def pending_count(self) -> int:
        """Deliveries not yet succeeded or failed for good, and outbox entries."""
        ...

    def next_due(self) -> float | None:
        """The earliest due time of a pending delivery, or ``None``."""
        ...

    def close(self) -> None:
        """Release what the store holds open."""
        ...
