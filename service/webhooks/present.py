"""ORM rows -> API shapes. Secrets appear only where a caller passes one in."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, cast

from service.db import utcnow
from service.models import TenantWebhookSecret, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from service.webhooks.schemas import (
    Attempt,
    Delivery,
    Endpoint,
    EndpointWithSecret,
    TenantSecret,
    TenantSecretShown,
)


def _rotation_ends(row: WebhookEndpoint | TenantWebhookSecret, now: datetime) -> datetime | None:
    ends = row.previous_secret_expires_at
    return ends if row.previous_secret and ends and ends > now else None


def endpoint(row: WebhookEndpoint) -> Endpoint:
    return Endpoint(
        id=row.id,
        url=row.url,
        description=row.description,
        event_types=list(row.event_types),
        enabled=row.enabled,
        disabled_reason=row.disabled_reason,
        disabled_at=row.disabled_at,
        secret_rotation_ends_at=_rotation_ends(row, utcnow()),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def endpoint_with_secret(row: WebhookEndpoint, secret: str) -> EndpointWithSecret:
    return EndpointWithSecret(**endpoint(row).model_dump(), secret=secret)


def attempt(row: WebhookAttempt) -> Attempt:
    return Attempt(
        number=row.number,
        at=row.at,
        url=row.url,
        http_status=row.http_status,
        error=row.error,
        latency_ms=row.latency_ms,
        response_body=row.response_body,
    )


def delivery(row: WebhookDelivery, attempts: list[WebhookAttempt]) -> Delivery:
    return Delivery(
        id=row.id,
        event_id=row.event_id,
        event_type=row.event_type,
        endpoint_id=row.endpoint_id,
        url=row.url,
        status=cast(Literal["pending", "delivered", "failed"], row.status),
        attempt_count=row.attempt_count,
        next_attempt_at=row.next_attempt_at,
        last_attempt_at=row.last_attempt_at,
        delivered_at=row.delivered_at,
        error=row.error,
        created_at=row.created_at,
        attempts=[attempt(a) for a in attempts],
    )


def tenant_secret(row: TenantWebhookSecret) -> TenantSecret:
    return TenantSecret(
        created_at=row.created_at,
        revealed=row.revealed_at is not None,
        rotation_ends_at=_rotation_ends(row, utcnow()),
    )


def tenant_secret_shown(row: TenantWebhookSecret, secret: str) -> TenantSecretShown:
    return TenantSecretShown(**tenant_secret(row).model_dump(), secret=secret)
