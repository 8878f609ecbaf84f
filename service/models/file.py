from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, CreatedAtMixin


class File(CreatedAtMixin, Base):
    """An uploaded file (the OpenAI drop-in's batch input). The bytes live in the files directory under the id;
    the row says whose they are and what they are for."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column("bytes", BigInteger)

    __table_args__ = (Index("ix_files_tenant_id_id", "tenant_id", "id"),)
