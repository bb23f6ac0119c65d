"""``SQLiteWebhookStore``: the embedded :class:`~mlsharp.service.webhooks.ports.WebhookStore`.

Tables prefixed ``webhook_`` and the ``outbox`` in the embedded database
(:class:`~mlsharp.service.database.Database`, shared with the jobs), each primitive one
``BEGIN IMMEDIATE`` transaction, so a restart loses nothing and several processes sharing
the file claim each delivery once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from mlsharp.service.database import Database
from mlsharp.service.outbox import SQLITE_SCHEMA as OUTBOX_SCHEMA
from mlsharp.service.outbox import OutboxEntry
from mlsharp.service.webhooks.model import (
    Attempt,
    Claimed,
    Delivery,
    NewDelivery,
    Webhook,
    check_room,
)

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at REAL NOT NULL,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    event TEXT NOT NULL,
    status TEXT NOT NULL,
    body TEXT NOT NULL,
    next_attempt_at REAL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due
    ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_webhook
    ON webhook_deliveries (webhook_id, created_at);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    at REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms REAL NOT NULL,
    PRIMARY KEY (delivery_id, number)
);
"""
    + OUTBOX_SCHEMA
)

#: The tables an earlier version kept in ``webhooks.sqlite3`` (merged into the database).
TABLES = ("webhook_endpoints", "webhook_deliveries", "webhook_attempts")


def _webhook(row: sqlite3.Row) -> Webhook:
    return Webhook(
        id=row["id"],
        url=row["url"],
        events=tuple(json.loads(row["events"])),
        secret=row["secret"],
        created_at=row["created_at"],
        owner=row["owner"],
    )


def _marks(values: Collection[str]) -> str:
    return ", ".join("?" for _ in values)


class SQLiteWebhookStore:
    """Webhooks in the embedded database (see the module docstring).

    ``db`` is the shared :class:`Database`, or a path to open one of its own.
    """

    def __init__(self, db: Database | Path) -> None:
        self._owns_db = not isinstance(db, Database)
        if isinstance(db, Database):
            self.db = db
        else:
            self.db = Database(Path(db), what="the webhook database", schema=SCHEMA)
        self.path = self.db.path

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        with self.db.read() as db:
            return db.execute(sql, params).fetchall()

    def add_webhook(self, hook: Webhook, *, max_per_owner: int) -> None:
        """Register ``hook`` unless its owner has ``max_per_owner`` already."""
        with self.db.write() as db:
            registered = db.execute(
                "SELECT count(*) FROM webhook_endpoints WHERE coalesce(owner, '') = ?",
                (hook.owner or "",),
            ).fetchone()[0]
            check_room(int(registered), max_per_owner)
            db.execute(
                "INSERT INTO webhook_endpoints (id, url, events, secret, created_at, owner)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    hook.id,
                    hook.url,
                    json.dumps(list(hook.events)),
                    hook.secret,
                    hook.created_at,
                    hook.owner,
                ),
            )

    def webhooks(self, owner: str | None) -> list[Webhook]:
        """The webhooks of ``owner``, oldest first."""
        rows = self._query(
            "SELECT * FROM webhook_endpoints WHERE coalesce(owner, '') = ?"
            " ORDER BY created_at, rowid",
            (owner or "",),
        )
        return [_webhook(r) for r in rows]

    def webhook(self, webhook_id: str) -> Webhook | None:
        """One webhook, or ``None``."""
        rows = self._query("SELECT * FROM webhook_endpoints WHERE id = ?", (webhook_id,))
        return _webhook(rows[0]) if rows else None

    def remove_webhook(self, webhook_id: str) -> bool:
        """Forget a webhook with its deliveries and their attempts."""
        with self.db.write() as db:
            cur = db.execute("DELETE FROM webhook_endpoints WHERE id = ?", (webhook_id,))
            db.execute(
                "DELETE FROM webhook_attempts WHERE delivery_id IN"
                " (SELECT id FROM webhook_deliveries WHERE webhook_id = ?)",
                (webhook_id,),
            )
            db.execute("DELETE FROM webhook_deliveries WHERE webhook_id = ?", (webhook_id,))
        return cur.rowcount > 0

    def add_deliveries(self, deliveries: Sequence[NewDelivery]) -> None:
        """Create pending deliveries due now, for webhooks that still exist."""
        if not deliveries:
            return
        with self.db.write() as db:
            db.executemany(
                "INSERT INTO webhook_deliveries"
                " (id, webhook_id, event, status, body, next_attempt_at, created_at)"
                " SELECT ?, ?, ?, 'pending', ?, ?, ?"
                " WHERE EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = ?)",
                [
                    (d.id, d.webhook_id, d.event, d.body, d.created_at, d.created_at, d.webhook_id)
                    for d in deliveries
                ],
            )

    def deliveries(self, webhook_id: str, limit: int) -> list[Delivery]:
        """The latest ``limit`` deliveries of a webhook with their attempts, newest first."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT * FROM webhook_deliveries WHERE webhook_id = ?"
                " ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (webhook_id, limit),
            ).fetchall()
            attempts: dict[str, list[Attempt]] = {r["id"]: [] for r in rows}
            if rows:
                for a in db.execute(
                    f"SELECT * FROM webhook_attempts WHERE delivery_id IN ({_marks(attempts)})"
                    " ORDER BY delivery_id, number",
                    list(attempts),
                ):
                    attempts[a["delivery_id"]].append(
                        Attempt(
                            number=a["number"],
                            at=a["at"],
                            status_code=a["status_code"],
                            error=a["error"],
                            duration_ms=a["duration_ms"],
                        )
                    )
        return [
            Delivery(
                id=r["id"],
                webhook_id=r["webhook_id"],
                event=r["event"],
                status=r["status"],
                attempts=tuple(attempts[r["id"]]),
                next_attempt_at=r["next_attempt_at"] if r["status"] == "pending" else None,
                created_at=r["created_at"],
                payload=json.loads(r["body"]),
            )
            for r in rows
        ]

    def claim(
        self,
        now: float,
        lease_until: float,
        *,
        skip_webhooks: Collection[str],
        skip_owners: Collection[str],
    ) -> Claimed | None:
        """Take the earliest due delivery outside the skipped webhooks and owners."""
        with self.db.write() as db:
            row = db.execute(
                "SELECT d.id, d.webhook_id, d.event, d.body, e.url, e.secret, e.owner,"
                " (SELECT count(*) FROM webhook_attempts a WHERE a.delivery_id = d.id) AS n"
                " FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.webhook_id"
                " WHERE d.status = 'pending' AND d.next_attempt_at <= ?"
                f" AND d.webhook_id NOT IN ({_marks(skip_webhooks)})"
                f" AND coalesce(e.owner, '') NOT IN ({_marks(skip_owners)})"
                " ORDER BY d.next_attempt_at, d.created_at, d.rowid LIMIT 1",
                (now, *skip_webhooks, *skip_owners),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id = ?",
                (lease_until, row["id"]),
            )
        return Claimed(
            id=row["id"],
            webhook_id=row["webhook_id"],
            owner=row["owner"],
            url=row["url"],
            secret=row["secret"],
            event=row["event"],
            body=row["body"],
            number=int(row["n"]) + 1,
        )

    def record(
        self, delivery_id: str, attempt: Attempt, status: str, next_at: float | None
    ) -> None:
        """Add the attempt and set the delivery's status (nothing if it was deleted)."""
        with self.db.write() as db:
            cur = db.execute(
                "UPDATE webhook_deliveries SET status = ?, next_attempt_at = ?"
                " WHERE id = ? AND status = 'pending'",
                (status, next_at, delivery_id),
            )
            if cur.rowcount:  # 0 when the webhook was deleted meanwhile
                db.execute(
                    "INSERT OR REPLACE INTO webhook_attempts"
                    " (delivery_id, number, at, status_code, error, duration_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        delivery_id,
                        attempt.number,
                        attempt.at,
                        attempt.status_code,
                        attempt.error,
                        attempt.duration_ms,
                    ),
                )

    def outbox(self, limit: int) -> list[OutboxEntry]:
        """The oldest ``limit`` outbox entries."""
        rows = self._query(
            "SELECT key, event, owner, record, created_at FROM outbox"
            " ORDER BY created_at, key LIMIT ?",
            (limit,),
        )
        return [OutboxEntry(*row) for row in rows]

    def fan_out(
        self, entry: OutboxEntry, make: Callable[[list[Webhook]], Sequence[NewDelivery]]
    ) -> int:
        """Remove ``entry`` and add ``make(its owner's webhooks)``, in one transaction."""
        with self.db.write() as db:
            gone = db.execute("DELETE FROM outbox WHERE key = ?", (entry.key,)).rowcount == 0
            if gone:  # another process relayed it
                return 0
            rows = db.execute(
                "SELECT * FROM webhook_endpoints WHERE coalesce(owner, '') = ?"
                " ORDER BY created_at, rowid",
                (entry.owner or "",),
            ).fetchall()
            created = make([_webhook(r) for r in rows])
            db.executemany(
                "INSERT INTO webhook_deliveries"
                " (id, webhook_id, event, status, body, next_attempt_at, created_at)"
                " VALUES (?, ?, ?, 'pending', ?, ?, ?)",
                [
                    (d.id, d.webhook_id, d.event, d.body, d.created_at, d.created_at)
                    for d in created
                ],
            )
        return len(created)

    def pending_count(self) -> int:
        """Deliveries still pending, and outbox entries not relayed yet."""
        rows = self._query(
            "SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending')"
            " + (SELECT count(*) FROM outbox)"
        )
        return int(rows[0][0])

    def next_due(self) -> float | None:
        """The earliest due time of a pending delivery."""
        rows = self._query(
            "SELECT min(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending'"
        )
        return None if rows[0][0] is None else float(rows[0][0])

    def close(self) -> None:
        """Close the database if this store opened it."""
        if self._owns_db:
            self.db.close()
