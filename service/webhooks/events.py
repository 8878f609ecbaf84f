"""The event types, the envelope receivers get, and how it is signed (Standard Webhooks).

The envelope is documented and stable: `{"id": "evt_...", "type", "created_at": RFC 3339, "data": {...}}`.
`data` is a compact resource without large bodies; the receiver fetches the rest with the API.
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime
from typing import Literal, get_args

from standardwebhooks import Webhook

from service.models import WebhookEvent

EventType = Literal[
    "job.succeeded",
    "job.failed",
    "job.canceled",
    "job.expired",
    "batch.progress",
    "batch.ended",
    "budget.soft_limit",
    "schedule.run.started",
    "schedule.run.ended",
    "schedule.paused",
    "webhook_endpoint.disabled",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
# Sent only to endpoints that list them by name: they can be frequent.
OPT_IN = frozenset({"batch.progress"})
ENDPOINT_DISABLED = "webhook_endpoint.disabled"

SECRET_PREFIX = "whsec_"
USER_AGENT = "minimax-jobs-webhooks"


def new_secret() -> str:
    """`whsec_` + base64 of 32 random bytes (the spec allows 24 to 64)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def envelope(event: WebhookEvent) -> bytes:
    """The body every receiver of `event` gets, byte for byte the same on every attempt."""
    body = {"id": event.id, "type": event.type, "created_at": rfc3339(event.created_at), "data": event.data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def signed_headers(*, msg_id: str, body: bytes, signing_secrets: list[str], at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers; one `v1,...` signature per secret (two during a rotation)."""
    text = body.decode()
    at = at.astimezone(UTC)  # the library reads the clock fields as UTC
    signatures = [Webhook(secret).sign(msg_id, at, text) for secret in signing_secrets]
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(signatures),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
