"""The outbox: a job's end and its webhook deliveries, committed together.

A job store that commits a job's final state (``job.succeeded``, ``job.failed``, see
:func:`~mlsharp.service.jobs.model.outcome_event`) writes an :class:`OutboxEntry` in the
same transaction: a snapshot of the record and the event. The webhook dispatcher then
turns each entry into one delivery per subscribed endpoint and removes it, again in one
transaction (:meth:`~mlsharp.service.webhooks.ports.WebhookStore.fan_out`), so a crash
between the two steps loses nothing and sends nothing twice.

Where entries live (shared by the job and webhook adapters of each backend):

* SQLite: the ``outbox`` table of the embedded database (jobs, outbox and webhooks are
  one file, so the job's change and its entry are one transaction);
* Redis: ``<ns>:outbox`` (entry keys by creation time) and ``<ns>:outbox:<key>`` (JSON).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    owner TEXT,
    record TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class OutboxEntry:
    """One event to publish: ``event`` of the job whose record (JSON) is ``record``."""

    #: ``<job id>:<event>``: at most one entry per job and event.
    key: str
    event: str
    owner: str | None
    record: str
    created_at: float

    def to_json(self) -> str:
        """The entry as JSON (Redis)."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> OutboxEntry:
        """An entry from :meth:`to_json`."""
        return cls(**json.loads(raw))


def redis_index(namespace: str) -> str:
    """The sorted set of entry keys, by creation time."""
    return f"{namespace}:outbox"


def redis_entry(namespace: str, key: str) -> str:
    """The key holding one entry's JSON."""
    return f"{namespace}:outbox:{key}"
