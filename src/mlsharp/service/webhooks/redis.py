"""``RedisWebhookStore``: webhooks shared by every API instance of the scale-out mode.

Keys (``ns`` is ``<queue_namespace>:wh``)::

    ns:hook:<id>             a webhook as JSON
    ns:owner:<owner>         its owner's webhook ids by creation time
    ns:delivery:<id>         a delivery as JSON (status, body, next attempt)
    ns:attempts:<id>         list of its attempts as JSON
    ns:by_hook:<hook id>     the webhook's delivery ids by creation time
    ns:due                   pending delivery ids by due time

A claim is one script: it takes the earliest due delivery outside the skipped webhooks
and owners and pushes its due time past the attempt (the lease), so no other instance
sends it meanwhile; if the instance dies mid-attempt, the delivery becomes due again
(same ``webhook-id``, which receivers use to de-duplicate). Connection errors are
:class:`~mlsharp.errors.ServiceUnavailable` (a 503 on API routes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict
from typing import Any

from mlsharp.service import outbox
from mlsharp.service.outbox import OutboxEntry
from mlsharp.service.redis_conn import guarded
from mlsharp.service.webhooks.model import (
    Attempt,
    Claimed,
    Delivery,
    NewDelivery,
    Webhook,
    check_room,
)

#: Due entries one claim looks at, at most (the rest wait for the next claim).
_CLAIM_SCAN = 1000

# KEYS[1] the due set. ARGV: now, lease, namespace, n, n webhook ids to skip, then the
# owners to skip. Returns {delivery id, webhook JSON, delivery JSON, attempts so far}.
_CLAIM = """
local due_key, now, lease, ns = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local nhooks = tonumber(ARGV[4])
local skip_hooks, skip_owners = {}, {}
for i = 1, nhooks do skip_hooks[ARGV[4 + i]] = true end
for i = 5 + nhooks, #ARGV do skip_owners[ARGV[i]] = true end
local offset = 0
while offset < SCAN do
  local due = redis.call('zrangebyscore', due_key, '-inf', now, 'LIMIT', offset, 50)
  if #due == 0 then return false end
  for _, id in ipairs(due) do
    local raw = redis.call('get', ns .. ':delivery:' .. id)
    local record = raw and cjson.decode(raw)
    local hook_raw = record and redis.call('get', ns .. ':hook:' .. record.webhook_id)
    if not hook_raw then
      redis.call('zrem', due_key, id)
      redis.call('del', ns .. ':delivery:' .. id, ns .. ':attempts:' .. id)
      offset = offset - 1
    elseif not skip_hooks[record.webhook_id] then
      local owner = cjson.decode(hook_raw).owner
      if owner == nil or owner == cjson.null then owner = '' end
      if not skip_owners[owner] then
        redis.call('zadd', due_key, lease, id)
        return {id, hook_raw, raw, redis.call('llen', ns .. ':attempts:' .. id)}
      end
    end
  end
  offset = offset + #due
end
return false
""".replace("SCAN", str(_CLAIM_SCAN))


def _hook(raw: bytes | str) -> Webhook:
    data = json.loads(raw)
    data["events"] = tuple(data["events"])
    return Webhook(**data)


class RedisWebhookStore:
    """Webhooks in Redis under ``<namespace>:wh`` (see the module docstring)."""

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.ns = f"{namespace}:wh"
        self._claim = client.register_script(_CLAIM)

    @guarded
    def add_webhook(self, hook: Webhook, *, max_per_owner: int) -> None:
        """Register ``hook`` unless its owner has ``max_per_owner`` already (under WATCH)."""
        owner_key = f"{self.ns}:owner:{hook.owner or ''}"
        data = {**asdict(hook), "events": list(hook.events)}

        def tx(pipe: Any) -> None:
            check_room(int(pipe.zcard(owner_key)), max_per_owner)
            pipe.multi()
            pipe.set(f"{self.ns}:hook:{hook.id}", json.dumps(data))
            pipe.zadd(owner_key, {hook.id: hook.created_at})

        self.client.transaction(tx, owner_key)

    @guarded
    def webhooks(self, owner: str | None) -> list[Webhook]:
        """The webhooks of ``owner``, oldest first."""
        ids = self.client.zrange(f"{self.ns}:owner:{owner or ''}", 0, -1)
        if not ids:
            return []
        raws = self.client.mget([f"{self.ns}:hook:{i.decode()}" for i in ids])
        return [_hook(raw) for raw in raws if raw is not None]

    @guarded
    def webhook(self, webhook_id: str) -> Webhook | None:
        """One webhook, or ``None``."""
        raw = self.client.get(f"{self.ns}:hook:{webhook_id}")
        return None if raw is None else _hook(raw)

    @guarded
    def remove_webhook(self, webhook_id: str) -> bool:
        """Forget a webhook with its deliveries."""
        hook = self.webhook(webhook_id)
        if hook is None:
            return False
        ids = [i.decode() for i in self.client.zrange(f"{self.ns}:by_hook:{webhook_id}", 0, -1)]
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(f"{self.ns}:hook:{webhook_id}", f"{self.ns}:by_hook:{webhook_id}")
        pipe.zrem(f"{self.ns}:owner:{hook.owner or ''}", webhook_id)
        for delivery_id in ids:
            pipe.delete(f"{self.ns}:delivery:{delivery_id}", f"{self.ns}:attempts:{delivery_id}")
            pipe.zrem(f"{self.ns}:due", delivery_id)
        pipe.execute()
        return True

    def _queue_deliveries(self, pipe: Any, deliveries: Sequence[NewDelivery]) -> None:
        for d in deliveries:
            record = {
                "id": d.id,
                "webhook_id": d.webhook_id,
                "event": d.event,
                "status": "pending",
                "body": d.body,
                "next_attempt_at": d.created_at,
                "created_at": d.created_at,
            }
            pipe.set(f"{self.ns}:delivery:{d.id}", json.dumps(record))
            pipe.zadd(f"{self.ns}:by_hook:{d.webhook_id}", {d.id: d.created_at})
            pipe.zadd(f"{self.ns}:due", {d.id: d.created_at})

    @guarded
    def add_deliveries(self, deliveries: Sequence[NewDelivery]) -> None:
        """Create pending deliveries due now (a claim drops those of a deleted webhook)."""
        if not deliveries:
            return
        pipe = self.client.pipeline(transaction=True)
        self._queue_deliveries(pipe, deliveries)
        pipe.execute()

    @guarded
    def deliveries(self, webhook_id: str, limit: int) -> list[Delivery]:
        """The latest ``limit`` deliveries of a webhook with their attempts, newest first."""
        key = f"{self.ns}:by_hook:{webhook_id}"
        ids = [i.decode() for i in self.client.zrevrange(key, 0, max(0, limit) - 1)]
        found = []
        for delivery_id in ids:
            raw = self.client.get(f"{self.ns}:delivery:{delivery_id}")
            if raw is None:
                continue
            record = json.loads(raw)
            attempts = tuple(
                Attempt(**json.loads(a))
                for a in self.client.lrange(f"{self.ns}:attempts:{delivery_id}", 0, -1)
            )
            pending = record["status"] == "pending"
            found.append(
                Delivery(
                    id=record["id"],
                    webhook_id=record["webhook_id"],
                    event=record["event"],
                    status=record["status"],
                    attempts=attempts,
                    next_attempt_at=record["next_attempt_at"] if pending else None,
                    created_at=record["created_at"],
                    payload=json.loads(record["body"]),
                )
            )
        return found

    @guarded
    def claim(
        self,
        now: float,
        lease_until: float,
        *,
        skip_webhooks: Collection[str],
        skip_owners: Collection[str],
    ) -> Claimed | None:
        """Take the earliest due delivery outside the skipped webhooks and owners."""
        args = [now, lease_until, self.ns, len(skip_webhooks), *skip_webhooks, *skip_owners]
        found = self._claim(keys=[f"{self.ns}:due"], args=args)
        if not found:
            return None
        delivery_id, hook_raw, raw, attempts = found
        hook, record = _hook(hook_raw), json.loads(raw)
        return Claimed(
            id=delivery_id.decode(),
            webhook_id=hook.id,
            owner=hook.owner,
            url=hook.url,
            secret=hook.secret,
            event=record["event"],
            body=record["body"],
            number=int(attempts) + 1,
        )

    @guarded
    def record(
        self, delivery_id: str, attempt: Attempt, status: str, next_at: float | None
    ) -> None:
        """Add the attempt and set the delivery's status (nothing if it was deleted)."""
        key = f"{self.ns}:delivery:{delivery_id}"

        def tx(pipe: Any) -> None:
            raw = pipe.get(key)
            if raw is None:  # deleted with its webhook meanwhile
                return
            record = {**json.loads(raw), "status": status, "next_attempt_at": next_at}
            pipe.multi()
            pipe.set(key, json.dumps(record))
            pipe.rpush(f"{self.ns}:attempts:{delivery_id}", json.dumps(asdict(attempt)))
            if next_at is None:
                pipe.zrem(f"{self.ns}:due", delivery_id)
            else:
                pipe.zadd(f"{self.ns}:due", {delivery_id: next_at})

        self.client.transaction(tx, key)

    @guarded
    def outbox(self, limit: int) -> list[OutboxEntry]:
        """The oldest ``limit`` outbox entries."""
        keys = [
            k.decode() for k in self.client.zrange(outbox.redis_index(self.namespace), 0, limit - 1)
        ]
        if not keys:
            return []
        raws = self.client.mget([outbox.redis_entry(self.namespace, k) for k in keys])
        return [OutboxEntry.from_json(raw) for raw in raws if raw is not None]

    @guarded
    def fan_out(
        self, entry: OutboxEntry, make: Callable[[list[Webhook]], Sequence[NewDelivery]]
    ) -> int:
        """Remove ``entry`` and add ``make(its owner's webhooks)``, in one transaction
        (``WATCH`` on the entry: of two instances relaying it, one does)."""
        key = outbox.redis_entry(self.namespace, entry.key)
        owner_key = f"{self.ns}:owner:{entry.owner or ''}"
        made: list[int] = []

        def tx(pipe: Any) -> None:
            made.clear()
            if not pipe.exists(key):  # another instance relayed it
                return
            ids = [i.decode() for i in pipe.zrange(owner_key, 0, -1)]
            raws = pipe.mget([f"{self.ns}:hook:{i}" for i in ids]) if ids else []
            created = make([_hook(raw) for raw in raws if raw is not None])
            pipe.multi()
            pipe.delete(key)
            pipe.zrem(outbox.redis_index(self.namespace), entry.key)
            self._queue_deliveries(pipe, created)
            made.append(len(created))

        self.client.transaction(tx, key, owner_key)
        return made[0] if made else 0

    @guarded
    def pending_count(self) -> int:
        """Deliveries waiting to be sent and outbox entries not relayed (cluster-wide)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(f"{self.ns}:due")
        pipe.zcard(outbox.redis_index(self.namespace))
        return sum(int(n) for n in pipe.execute())

    @guarded
    def next_due(self) -> float | None:
        """The earliest due time of a pending delivery."""
        first = self.client.zrange(f"{self.ns}:due", 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def close(self) -> None:
        """Nothing to release (the Redis client belongs to the state)."""
