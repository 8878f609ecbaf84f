from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.models.base import Base, CreatedAtMixin


class Tenant(CreatedAtMixin, Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # Optional caps on this tenant's share of the upstream account (None: no cap).
    rpm_limit: Mapped[int | None]
    tpm_limit: Mapped[int | None]
    concurrency_limit: Mapped[int | None]
    # Intake limits (service/limits/): overrides of the operator's MMJOBS_ defaults; None: the default applies.
    requests_per_minute: Mapped[int | None]
    key_requests_per_minute: Mapped[int | None]
    max_queued_jobs: Mapped[int | None]
    max_active_batches: Mapped[int | None]
    max_schedules: Mapped[int | None]
    max_stored_file_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Set by `mmjobs tenants disable`: nothing of the tenant's is dispatched or fired, and it creates nothing.
    disabled_at: Mapped[datetime | None]

    # Not a column: True only on a tenant the API key cache (service/tenants/keycache.py) found without any budget,
    # so a submission skips the budget queries (issue 17.1). Any budget written bumps the cache's generation.
    no_budgets = False


class ApiKey(CreatedAtMixin, Base):
    """An API key, stored as the SHA-256 of the secret: the secret itself is shown once and never kept.

    Keys carry 256 random bits, so a fast hash is safe, and lookup by hash means the
    secret is never compared byte by byte (no timing leak).
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[datetime | None]

    tenant: Mapped[Tenant] = relationship(lazy="joined")
