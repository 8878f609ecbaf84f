from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from service.db import BigIntPK, JSONType, utcnow
from service.models.base import Base, CreatedAtMixin


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its first or next attempt
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up: attempts exhausted, 410 Gone, or the endpoint was disabled


class SigningSecretMixin:
    """A Standard Webhooks secret (`whsec_...`), kept usable (not hashed) because we sign with it. During a
    rotation the previous secret signs too until `previous_secret_expires_at`."""

    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[datetime | None]

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets a delivery sent at `now` is signed with, newest first."""
        out = [self.secret]
        if self.previous_secret and self.previous_secret_expires_at and self.previous_secret_expires_at > now:
            out.append(self.previous_secret)
        return out


class WebhookEndpoint(SigningSecretMixin, CreatedAtMixin, Base):
    """A tenant's registered receiver. `event_types` empty: every type except the opt-in ones."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(String(500), default="")
    event_types: Mapped[list[str]] = mapped_column(JSONType, default=list)
    enabled: Mapped[bool] = mapped_column(default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    disabled_at: Mapped[datetime | None]
    # The first failed attempt since the last success; five days of that disables the endpoint.
    failing_since: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_webhook_endpoints_tenant_id_id", "tenant_id", "id"),)


class TenantWebhookSecret(SigningSecretMixin, CreatedAtMixin, Base):
    """The secret that signs deliveries to per-job and per-batch `webhook_url`s. Made lazily; shown once."""

    __tablename__ = "webhook_tenant_secrets"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    revealed_at: Mapped[datetime | None]


class WebhookEvent(CreatedAtMixin, Base):
    """One thing that happened, as its receivers get it: the envelope is {id, type, created_at, data}."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)

    __table_args__ = (Index("ix_webhook_events_tenant_id_id", "tenant_id", "id"),)


class WebhookDelivery(CreatedAtMixin, Base):
    """One event for one target: a registered endpoint, or a job's or batch's own `url` (endpoint_id NULL).

    The retry schedule lives here, not in Celery: `next_attempt_at` is computed from `attempt_count`, and the
    scheduler publishes what is due (`dispatched_at` says when, so a lost message is published again).
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(64))
    endpoint_id: Mapped[str | None] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    # The ad-hoc target; an endpoint's deliveries go to its current URL.
    url: Mapped[str | None] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempt_count: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    dispatched_at: Mapped[datetime | None]
    # A worker holds the delivery while it sends: a duplicate task finds it locked and does nothing.
    locked_until: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(String(500))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_webhook_deliveries_tenant_id_id", "tenant_id", "id"),
        Index("ix_webhook_deliveries_endpoint_id_status", "endpoint_id", "status"),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: its status or transport error, latency and the start of the answer."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    number: Mapped[int]
    at: Mapped[datetime] = mapped_column(default=utcnow)
    url: Mapped[str] = mapped_column(String(2048))
    http_status: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(String(500))
    latency_ms: Mapped[int]
    response_body: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("delivery_id", "number"),)
