from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String, true
from sqlalchemy.orm import Mapped, mapped_column

from service.db import JSONType
from service.models.base import Base, CreatedAtMixin


class IdempotencyKey(CreatedAtMixin, Base):
    """A POST made with an `Idempotency-Key`, per tenant: in flight while `status_code` is None (held by `owner`
    until `locked_until`, renewed while its request runs), then its response, replayed until `expires_at`."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    path: Mapped[str] = mapped_column(String(2048))
    # sha256 of method, path, query and body; None until a body too large to buffer has been read through.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(32))
    locked_until: Mapped[datetime]
    expires_at: Mapped[datetime]
    status_code: Mapped[int | None]
    response_headers: Mapped[list[list[str]] | None] = mapped_column(JSONType)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    # False: the response showed a secret (Cache-Control: no-store), so neither its body nor its headers were
    # kept; a replay answers 409 `idempotency_key_unreplayable` (issue 14.5).
    replayable: Mapped[bool] = mapped_column(default=True, server_default=true())
    completed_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_idempotency_keys_expires_at", "expires_at"),)
