from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, CreatedAtMixin


class TenantUpstreamKey(CreatedAtMixin, Base):
    """A tenant's own MiniMax key (service/accounts/tenant_keys.py): encrypted at rest (Fernet, MMJOBS_SECRET_KEY),
    never shown back (only its fingerprint, the last four characters). Used only for this tenant's jobs."""

    __tablename__ = "tenant_upstream_keys"

    tenant_id: Mapped[str] = mapped_column(String(40), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    encrypted_key: Mapped[bytes] = mapped_column(LargeBinary)
    fingerprint: Mapped[str] = mapped_column(String(16))
    base_url: Mapped[str] = mapped_column(String(2048))
    # {"MiniMax-M2.7": {"rpm": 60, "tpm": null}}: the limits the tenant's account has (absent: MiniMax's published).
    rate_limits: Mapped[dict[str, dict[str, int | None]]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime | None]
