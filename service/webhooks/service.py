"""The webhook use cases behind the HTTP routes. Functions flush; the request dependency commits.

Secrets are returned only by the calls that create them (creation, rotation, the one reveal of the tenant's
secret) and never logged.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from service import dispatch, netguard
from service.api.errors import APIError, not_found
from service.config import Settings
from service.db import new_id, utcnow
from service.models import ApiKey, TenantWebhookSecret, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from service.webhooks import repository
from service.webhooks.events import new_secret
from service.webhooks.schemas import EndpointCreate, EndpointUpdate

MAX_ENDPOINTS = 50
# Both secrets sign every delivery for this long after a rotation, so receivers can switch without a gap.
ROTATION_WINDOW = timedelta(hours=24)


def _unique(types: list[str]) -> list[str]:
    return list(dict.fromkeys(types))


def _check_url(url: str, settings: Settings) -> None:
    netguard.check_url(url, field="url", allow_loopback=settings.webhook_allow_loopback)


def create_endpoint(
    session: Session, *, key: ApiKey, body: EndpointCreate, settings: Settings
) -> tuple[WebhookEndpoint, str]:
    _check_url(body.url, settings)
    if repository.count_endpoints(session, tenant_id=key.tenant_id) >= MAX_ENDPOINTS:
        raise APIError(409, "limit_reached", f"a tenant can register at most {MAX_ENDPOINTS} webhook endpoints")
    now = utcnow()
    secret = new_secret()
    endpoint = WebhookEndpoint(
        id=new_id("we"),
        tenant_id=key.tenant_id,
        url=body.url,
        description=body.description,
        event_types=_unique(list(body.event_types)),
        enabled=True,
        secret=secret,
        created_at=now,
        updated_at=now,
    )
    repository.add_all(session, [endpoint])
    return endpoint, secret


def get_endpoint(session: Session, *, key: ApiKey, endpoint_id: str) -> WebhookEndpoint:
    endpoint = repository.get_endpoint(session, tenant_id=key.tenant_id, endpoint_id=endpoint_id)
    if endpoint is None:
        raise not_found("webhook endpoint", endpoint_id)
    return endpoint


def list_endpoints(
    session: Session, *, key: ApiKey, limit: int, cursor: str | None
) -> tuple[list[WebhookEndpoint], bool]:
    rows = repository.list_endpoints(session, tenant_id=key.tenant_id, limit=limit, cursor=cursor)
    return rows[:limit], len(rows) > limit


def update_endpoint(
    session: Session, *, key: ApiKey, endpoint_id: str, body: EndpointUpdate, settings: Settings
) -> WebhookEndpoint:
    endpoint = get_endpoint(session, key=key, endpoint_id=endpoint_id)
    given = body.model_fields_set
    for field in ("url", "description", "enabled"):
        if field in given and getattr(body, field) is None:
            raise APIError(422, "invalid_request", f"{field}: must not be null", field=field)
    now = utcnow()
    if body.url is not None:
        _check_url(body.url, settings)
        endpoint.url = body.url
    if "event_types" in given:
        endpoint.event_types = _unique(list(body.event_types or []))
    if body.description is not None:
        endpoint.description = body.description
    endpoint.updated_at = now
    session.flush()
    if body.enabled is True and not endpoint.enabled:
        endpoint.enabled = True
        endpoint.disabled_reason = None
        endpoint.disabled_at = None
        endpoint.failing_since = None
        session.flush()
    elif body.enabled is False:
        repository.disable_endpoint(session, endpoint_id=endpoint.id, reason="disabled through the API", now=now)
        session.refresh(endpoint)
    return endpoint


def delete_endpoint(session: Session, *, key: ApiKey, endpoint_id: str) -> None:
    """Deletes the endpoint with its deliveries; a delivery being sent right now finishes harmlessly."""
    repository.delete_endpoint(session, get_endpoint(session, key=key, endpoint_id=endpoint_id))


def _rotate(row: WebhookEndpoint | TenantWebhookSecret, now: datetime) -> str:
    secret = new_secret()
    row.previous_secret = row.secret
    row.previous_secret_expires_at = now + ROTATION_WINDOW
    row.secret = secret
    return secret


def rotate_endpoint_secret(session: Session, *, key: ApiKey, endpoint_id: str) -> tuple[WebhookEndpoint, str]:
    endpoint = get_endpoint(session, key=key, endpoint_id=endpoint_id)
    now = utcnow()
    secret = _rotate(endpoint, now)
    endpoint.updated_at = now
    session.flush()
    return endpoint, secret


def tenant_secret(session: Session, *, key: ApiKey) -> TenantWebhookSecret | None:
    return repository.get_tenant_secret(session, tenant_id=key.tenant_id)


def reveal_tenant_secret(session: Session, *, key: ApiKey) -> tuple[TenantWebhookSecret, str]:
    """Show the tenant's secret once (creating it if no event has yet); afterwards only a rotation shows one."""
    now = utcnow()
    repository.ensure_tenant_secret(session, tenant_id=key.tenant_id, secret=new_secret(), now=now)
    if not repository.reveal_tenant_secret(session, tenant_id=key.tenant_id, now=now):
        raise APIError(
            409,
            "secret_already_shown",
            "the webhook secret was already shown once; rotate it (POST /v1/webhook-secret/rotate) for a new one",
        )
    row = repository.get_tenant_secret(session, tenant_id=key.tenant_id)
    assert row is not None
    return row, row.secret


def rotate_tenant_secret(session: Session, *, key: ApiKey) -> tuple[TenantWebhookSecret, str]:
    now = utcnow()
    repository.ensure_tenant_secret(session, tenant_id=key.tenant_id, secret=new_secret(), now=now)
    row = repository.get_tenant_secret(session, tenant_id=key.tenant_id)
    assert row is not None
    secret = _rotate(row, now)
    row.revealed_at = now
    session.flush()
    return row, secret


def list_deliveries(
    session: Session,
    *,
    key: ApiKey,
    limit: int,
    cursor: str | None,
    endpoint_id: str | None,
    event_type: str | None,
    status: str | None,
) -> tuple[list[tuple[WebhookDelivery, list[WebhookAttempt]]], bool]:
    rows = repository.list_deliveries(
        session,
        tenant_id=key.tenant_id,
        limit=limit,
        cursor=cursor,
        endpoint_id=endpoint_id,
        event_type=event_type,
        status=status,
    )
    page = rows[:limit]
    attempts = repository.attempts_for(session, delivery_ids=[d.id for d in page])
    return [(d, attempts[d.id]) for d in page], len(rows) > limit


def get_delivery(session: Session, *, key: ApiKey, delivery_id: str) -> tuple[WebhookDelivery, list[WebhookAttempt]]:
    delivery = repository.get_delivery(session, tenant_id=key.tenant_id, delivery_id=delivery_id)
    if delivery is None:
        raise not_found("webhook delivery", delivery_id)
    return delivery, repository.attempts_for(session, delivery_ids=[delivery.id])[delivery.id]


def redeliver(
    session: Session, *, key: ApiKey, delivery_id: str, settings: Settings
) -> tuple[WebhookDelivery, list[WebhookAttempt]]:
    """Queue one more attempt now, whatever the delivery's state (the receiver dedupes on `webhook-id`)."""
    delivery, _ = get_delivery(session, key=key, delivery_id=delivery_id)
    if delivery.endpoint_id is not None:
        endpoint = get_endpoint(session, key=key, endpoint_id=delivery.endpoint_id)
        if not endpoint.enabled:
            raise APIError(
                409,
                "endpoint_disabled",
                f"webhook endpoint {endpoint.id!r} is disabled; enable it (PATCH enabled=true) first",
            )
    repository.requeue(session, tenant_id=key.tenant_id, delivery_id=delivery.id, now=utcnow())
    dispatch.wake_scheduler_after_commit(session, settings)
    session.refresh(delivery)
    return get_delivery(session, key=key, delivery_id=delivery_id)
