"""`batch.progress` events (issue 16 point 7): a batch's counts while it runs, throttled so that a 100,000-request
batch sends a handful, not one per request.

An event goes out when a request of the batch reaches a final state and either a tenth of the batch has finished
since the last one, or `EVERY_SECONDS` have passed since the last one (or since the batch was created). Ended
batches get `batch.ended` instead. Sent only to endpoints that list `batch.progress` by name (it is opt-in, see
service/webhooks/events.py), never to the batch's own `webhook_url`, which cannot opt in.

Runs inside the terminal transition's transaction (service/jobs/landing.py), right after that transaction
updated the same batch rows, so it takes no lock the transition did not already hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, update
from sqlalchemy.orm import Session

from service.models import Batch, BatchStatus
from service.webhooks import outbox

EVERY_SECONDS = 5.0
STEPS = 10  # an event per tenth of the batch at most (rounded up: at least one request)


def on_counts_moved(session: Session, *, batch_ids: Sequence[str], now: datetime) -> None:
    """Emit `batch.progress` for those of `batch_ids` (whose counts just moved) that are due one."""
    if not batch_ids:
        return
    done = Batch.request_total - Batch.processing
    due = session.scalars(
        update(Batch)
        .where(
            Batch.id.in_(sorted(batch_ids)),
            Batch.status != BatchStatus.ENDED,
            done > func.coalesce(Batch.progress_done, 0),
            or_(
                done - func.coalesce(Batch.progress_done, 0) >= (Batch.request_total + STEPS - 1) // STEPS,
                func.coalesce(Batch.progress_at, Batch.created_at) <= now - timedelta(seconds=EVERY_SECONDS),
            ),
        )
        .values(progress_at=now, progress_done=done)
        .returning(Batch)
    ).all()
    for batch in due:
        outbox.emit(session, tenant_id=batch.tenant_id, type="batch.progress", data=batch_event(batch))


def batch_event(batch: Batch) -> dict[str, Any]:
    """A batch as its webhook events show it (`batch.progress`, `batch.ended`)."""
    return {
        "id": batch.id,
        "object": "batch",
        "processing_status": batch.status,
        "request_counts": {
            "processing": batch.processing,
            "succeeded": batch.succeeded,
            "errored": batch.errored,
            "canceled": batch.canceled,
            "expired": batch.expired,
        },
        "request_total": batch.request_total,
        "metadata": batch.meta,
        "created_at": batch.created_at,
        "ended_at": batch.ended_at,
    }
