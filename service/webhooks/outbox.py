"""The outbox: events are written in the caller's transaction, so an event exists exactly when the change it
reports was committed. The scheduler publishes the deliveries once due (workers/webhooks.py)."""

from __future__ import annotations

from typing import Any

from pydantic_core import to_jsonable_python
from sqlalchemy.orm import Session

from service.db import new_id, utcnow
from service.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookEvent
from service.webhooks import repository
from service.webhooks.events import EVENT_TYPES, OPT_IN, new_secret


def subscribed(endpoint: WebhookEndpoint, event_type: str) -> bool:
    """An endpoint listing no types gets every type except the opt-in ones."""
    if endpoint.event_types:
        return event_type in endpoint.event_types
    return event_type not in OPT_IN


def emit(
    session: Session, *, tenant_id: str, type: str, data: dict[str, Any], webhook_url: str | None = None
) -> str | None:
    """In the caller's transaction (flush only, never commit): write one event and one delivery per target:
    every enabled endpoint of the tenant subscribed to `type`, plus `webhook_url` if given (a job's or batch's
    own URL, signed with the tenant's secret, created here if the tenant has none yet). Deliveries are due now.

    `data` is a compact resource (datetimes become RFC 3339 strings). Returns the event id, or None when
    nobody listens (then nothing is written).
    """
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {type!r}")
    endpoints = [e for e in repository.enabled_endpoints(session, tenant_id=tenant_id) if subscribed(e, type)]
    if not endpoints and not webhook_url:
        return None
    now = utcnow()
    event = WebhookEvent(
        id=new_id("evt"), tenant_id=tenant_id, type=type, data=to_jsonable_python(data), created_at=now
    )
    repository.add_all(session, [event])
    targets: list[tuple[str | None, str | None]] = [(e.id, None) for e in endpoints]
    if webhook_url:
        repository.ensure_tenant_secret(session, tenant_id=tenant_id, secret=new_secret(), now=now)
        targets.append((None, webhook_url))
    repository.add_all(
        session,
        (
            WebhookDelivery(
                id=new_id("whd"),
                tenant_id=tenant_id,
                event_id=event.id,
                event_type=type,
                endpoint_id=endpoint_id,
                url=url,
                status=DeliveryStatus.PENDING,
                attempt_count=0,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
            for endpoint_id, url in targets
        ),
    )
    return event.id
