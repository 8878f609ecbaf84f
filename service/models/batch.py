from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from service.db import BigIntPK, JSONType, utcnow
from service.models.base import Base, CreatedAtMixin


class BatchStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    CANCELING = "canceling"
    ENDED = "ended"


# Which API created the batch: ours, or a drop-in that must answer in its own shapes.
BATCH_APIS = ("native", "anthropic", "openai")

# Job status -> the batch count it lands in once terminal.
COUNT_FOR_STATUS = {"succeeded": "succeeded", "failed": "errored", "canceled": "canceled", "expired": "expired"}


class Batch(CreatedAtMixin, Base):
    """Many jobs submitted together. Its counts and usage are this row plus its pending tallies (BatchTally):
    each job's terminal transition writes a tally in its own transaction, the scheduler folds tallies into the
    row, and every read adds the tallies not folded yet in the same statement (service/batches/tally.py), so the
    counts are exact at every moment; `processing` reaching 0 at a fold ends the batch."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    api: Mapped[str] = mapped_column(String(16), default="native")
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.IN_PROGRESS)
    meta: Mapped[dict[str, str]] = mapped_column("metadata", JSONType, default=dict)
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    # The OpenAI drop-in's input file and endpoint, echoed back on its batch object.
    input_file_id: Mapped[str | None] = mapped_column(String(64))
    endpoint: Mapped[str | None] = mapped_column(String(64))

    request_total: Mapped[int] = mapped_column(default=0)
    processing: Mapped[int] = mapped_column(default=0)
    succeeded: Mapped[int] = mapped_column(default=0)
    errored: Mapped[int] = mapped_column(default=0)
    canceled: Mapped[int] = mapped_column(default=0)
    expired: Mapped[int] = mapped_column(default=0)

    # Usage so far, moved with each billed attempt (service/usage/ledger.py): reading a batch never sums its rows.
    input_tokens: Mapped[int] = mapped_column(default=0)
    output_tokens: Mapped[int] = mapped_column(default=0)
    cache_read_tokens: Mapped[int] = mapped_column(default=0)
    cache_write_tokens: Mapped[int] = mapped_column(default=0)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(18, 9), default=Decimal(0))
    started_at: Mapped[datetime | None] = mapped_column(comment="When its first request started.")

    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    expires_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    cancel_initiated_at: Mapped[datetime | None]
    # The last `batch.progress` event: when, and how many requests had finished then (service/batches/progress.py).
    progress_at: Mapped[datetime | None]
    progress_done: Mapped[int | None]

    __table_args__ = (Index("ix_batches_tenant_id_api_id", "tenant_id", "api", "id"),)


class BatchTally(Base):
    """What some jobs' terminal transitions and billed attempts add to their batch, not folded into the batch row
    yet (service/batches/tally.py). Insert-only for the hot path: a finishing job never waits on its batch's row,
    which every other job of the batch would also need (issue 17.1). No foreign key: its check would lock the
    batch row too."""

    __tablename__ = "batch_tallies"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(String(48), index=True)
    succeeded: Mapped[int] = mapped_column(default=0)
    errored: Mapped[int] = mapped_column(default=0)
    canceled: Mapped[int] = mapped_column(default=0)
    expired: Mapped[int] = mapped_column(default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(18, 9), default=Decimal(0))
