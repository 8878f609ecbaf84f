"""Every webhook query: endpoints, the tenant secret, events, deliveries and attempts. Functions flush only.

Lock order (service/db.py): an endpoint before any of its deliveries, and several deliveries in ascending id."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, literal, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from service.db import UTCDateTime
from service.models import (
    DeliveryStatus,
    TenantWebhookSecret,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)


def add_all(session: Session, rows: Iterable[Any]) -> None:
    session.add_all(list(rows))
    session.flush()


# Endpoints


def get_endpoint(session: Session, *, tenant_id: str, endpoint_id: str) -> WebhookEndpoint | None:
    query = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id)
    return session.scalars(query).one_or_none()


def list_endpoints(session: Session, *, tenant_id: str, limit: int, cursor: str | None) -> list[WebhookEndpoint]:
    """Newest first, `limit + 1` rows so the caller can tell whether another page exists."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
    if cursor is not None:
        query = query.where(WebhookEndpoint.id < cursor)
    return list(session.scalars(query.order_by(WebhookEndpoint.id.desc()).limit(limit + 1)))


def count_endpoints(session: Session, *, tenant_id: str) -> int:
    query = select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
    return int(session.scalar(query) or 0)


def enabled_endpoints(session: Session, *, tenant_id: str) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.enabled.is_(True))
    return list(session.scalars(query.order_by(WebhookEndpoint.id)))


def delete_endpoint(session: Session, endpoint: WebhookEndpoint) -> None:
    session.delete(endpoint)
    session.flush()


def disable_endpoint(session: Session, *, endpoint_id: str, reason: str, now: datetime) -> bool:
    """Disable an enabled endpoint and give up its pending deliveries. False if it was already disabled."""
    landed = session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.enabled.is_(True))
        .values(enabled=False, disabled_reason=reason[:500], disabled_at=now, updated_at=now)
        .returning(WebhookEndpoint.id)
    ).all()
    if landed:
        fail_pending(session, endpoint_id=endpoint_id, error="the endpoint was disabled", now=now)
    return bool(landed)


def lock_endpoint(session: Session, *, endpoint_id: str) -> None:
    """Take the endpoint's row lock before touching its deliveries (lock order: service/db.py): two workers that
    both record a 410 from one endpoint then take their turns instead of each holding a delivery the other's
    `fail_pending` needs."""
    session.execute(select(WebhookEndpoint.id).where(WebhookEndpoint.id == endpoint_id).with_for_update())


def fail_pending(session: Session, *, endpoint_id: str, error: str, now: datetime) -> int:
    """Give up every pending delivery of an endpoint; call with the endpoint locked. The deliveries are locked in
    id order; one a worker is recording right now is skipped (its own write decides it)."""
    pending = (WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == DeliveryStatus.PENDING)
    ids = list(
        session.scalars(
            select(WebhookDelivery.id).where(*pending).order_by(WebhookDelivery.id).with_for_update(skip_locked=True)
        )
    )
    if not ids:
        return 0
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(ids), *pending)
        .values(status=DeliveryStatus.FAILED, next_attempt_at=None, dispatched_at=None, error=error, updated_at=now)
        .returning(WebhookDelivery.id)
    ).all()
    return len(result)


def fail_one(session: Session, *, delivery_id: str, error: str, now: datetime) -> None:
    """Give up one pending delivery (its endpoint was disabled after it was written)."""
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == DeliveryStatus.PENDING)
        .values(
            status=DeliveryStatus.FAILED,
            next_attempt_at=None,
            dispatched_at=None,
            locked_until=None,
            error=error,
            updated_at=now,
        )
    )


def note_failure(session: Session, *, endpoint_id: str, now: datetime) -> datetime | None:
    """Record a failed attempt on the endpoint; returns when its unbroken run of failures began."""
    return session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .values(failing_since=func.coalesce(WebhookEndpoint.failing_since, literal(now, UTCDateTime())))
        .returning(WebhookEndpoint.failing_since)
    ).scalar_one_or_none()


def note_success(session: Session, *, endpoint_id: str) -> None:
    session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.failing_since.is_not(None))
        .values(failing_since=None)
    )


# The tenant's secret for per-job and per-batch URLs


def ensure_tenant_secret(session: Session, *, tenant_id: str, secret: str, now: datetime) -> None:
    """Create the tenant's secret unless it exists. Two transactions racing both succeed (ON CONFLICT)."""
    session.execute(
        postgresql.insert(TenantWebhookSecret)
        .values(tenant_id=tenant_id, secret=secret, created_at=now)
        .on_conflict_do_nothing(index_elements=["tenant_id"])
    )


def get_tenant_secret(session: Session, *, tenant_id: str) -> TenantWebhookSecret | None:
    return session.get(TenantWebhookSecret, tenant_id, populate_existing=True)


def reveal_tenant_secret(session: Session, *, tenant_id: str, now: datetime) -> bool:
    """Mark the secret shown; only one caller ever wins."""
    landed = session.execute(
        update(TenantWebhookSecret)
        .where(TenantWebhookSecret.tenant_id == tenant_id, TenantWebhookSecret.revealed_at.is_(None))
        .values(revealed_at=now)
        .returning(TenantWebhookSecret.tenant_id)
    ).all()
    return bool(landed)


# Deliveries


def due_ids(session: Session, *, now: datetime, redispatch_before: datetime, limit: int) -> list[str]:
    """Pending deliveries whose time has come and that are not already with the broker (or were handed to it
    before `redispatch_before` and never finished: the message was lost). Locked, skipping rows another
    scheduler holds."""
    query = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= now,
            (WebhookDelivery.dispatched_at.is_(None)) | (WebhookDelivery.dispatched_at < redispatch_before),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(query))


def mark_dispatched(session: Session, *, delivery_ids: list[str], now: datetime) -> None:
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(delivery_ids)).values(dispatched_at=now))


def claim(session: Session, *, delivery_id: str, now: datetime, lock_until: datetime) -> WebhookDelivery | None:
    """Take a due, unlocked, pending delivery for one attempt. None: nothing to do (a duplicate task, already
    delivered, not due, or another worker is sending it)."""
    landed = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= now,
            WebhookDelivery.locked_until.is_(None) | (WebhookDelivery.locked_until <= now),
        )
        .values(locked_until=lock_until)
        .returning(WebhookDelivery.id)
    ).all()
    if not landed:
        return None
    return session.get(WebhookDelivery, delivery_id, populate_existing=True)


def finish_attempt(session: Session, *, delivery_id: str, number: int, values: dict[str, Any]) -> bool:
    """Store an attempt's outcome, guarded by the attempt count the worker started from."""
    landed = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.attempt_count == number - 1)
        .values(attempt_count=number, locked_until=None, dispatched_at=None, **values)
        .returning(WebhookDelivery.id)
    ).all()
    return bool(landed)


def get_delivery(session: Session, *, tenant_id: str, delivery_id: str) -> WebhookDelivery | None:
    query = select(WebhookDelivery).where(WebhookDelivery.id == delivery_id, WebhookDelivery.tenant_id == tenant_id)
    return session.scalars(query).one_or_none()


def list_deliveries(
    session: Session,
    *,
    tenant_id: str,
    limit: int,
    cursor: str | None = None,
    endpoint_id: str | None = None,
    event_type: str | None = None,
    status: str | None = None,
) -> list[WebhookDelivery]:
    """Newest first, `limit + 1` rows."""
    query = select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id)
    if cursor is not None:
        query = query.where(WebhookDelivery.id < cursor)
    if endpoint_id is not None:
        query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
    if event_type is not None:
        query = query.where(WebhookDelivery.event_type == event_type)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    return list(session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit + 1)))


def attempts_for(session: Session, *, delivery_ids: list[str]) -> dict[str, list[WebhookAttempt]]:
    out: dict[str, list[WebhookAttempt]] = {i: [] for i in delivery_ids}
    if delivery_ids:
        query = select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(delivery_ids))
        for attempt in session.scalars(query.order_by(WebhookAttempt.delivery_id, WebhookAttempt.number)):
            out[attempt.delivery_id].append(attempt)
    return out


def requeue(session: Session, *, tenant_id: str, delivery_id: str, now: datetime) -> bool:
    """Make a delivery due now for one more attempt (whatever its status)."""
    landed = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.tenant_id == tenant_id)
        .values(status=DeliveryStatus.PENDING, next_attempt_at=now, dispatched_at=None, error=None, updated_at=now)
        .returning(WebhookDelivery.id)
    ).all()
    return bool(landed)
