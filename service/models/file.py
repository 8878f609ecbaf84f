from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, CreatedAtMixin


class File(CreatedAtMixin, Base):
    """An uploaded file: an OpenAI drop-in batch input, or an image or video for MiniMax-M3 (`POST /v1/files`).
    The bytes live in the file store (a directory or S3) under the id; the row says whose they are, what they
    are, and where MiniMax has a copy."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column("bytes", BigInteger)
    # Hex SHA-256 of the bytes, and the type their content shows (images and videos); unset for older rows.
    sha256: Mapped[str | None] = mapped_column(String(64))
    media_type: Mapped[str | None] = mapped_column(String(64))
    # The copy in MiniMax's Files API (kept 7 days there), as a decimal string, and when it was uploaded; valid
    # only in the account that uploaded it: `minimax_account` is that account's fingerprint (workers/media.py).
    minimax_file_id: Mapped[str | None] = mapped_column(String(32))
    minimax_uploaded_at: Mapped[datetime | None]
    minimax_account: Mapped[str | None] = mapped_column(String(64))
    # While a worker uploads the file to MiniMax: until when that upload holds the file (others wait for it).
    minimax_upload_until: Mapped[datetime | None]

    __table_args__ = (Index("ix_files_tenant_id_id", "tenant_id", "id"),)
