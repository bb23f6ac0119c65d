"""Webhooks: tell a client's server when a job ends, the Standard Webhooks way.

signing.py     sign / verify / new_secret (Standard Webhooks)
ssrf.py        check_url: the SSRF guard, at creation and before every attempt
model.py       Webhook, Delivery, Attempt; the rules every backend shares
ports.py       WebhookStore: the storage primitives
dispatcher.py  WebhookService: registry, publishing, the one concurrent dispatcher
sqlite.py      SQLiteWebhookStore (embedded)
redis.py       RedisWebhookStore (scale-out; imported by the composition root only)
"""

from mlsharp.service.webhooks.dispatcher import WebhookService
from mlsharp.service.webhooks.model import EVENTS, Attempt, Delivery, Webhook
from mlsharp.service.webhooks.signing import new_secret, sign, verify
from mlsharp.service.webhooks.ssrf import check_url

__all__ = [
    "EVENTS",
    "Attempt",
    "Delivery",
    "Webhook",
    "WebhookService",
    "check_url",
    "new_secret",
    "sign",
    "verify",
]
