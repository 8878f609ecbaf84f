from __future__ import annotations

from fastapi import Request
from sqlalchemy.orm import Session

from service.api.links import link
from service.batches import service
from service.batches.schemas import BatchOut, RequestCounts
from service.db import utcnow
from service.jobs.schemas import UsageCost
from service.models import Batch


def counts(batch: Batch) -> RequestCounts:
    return RequestCounts(
        processing=batch.processing,
        succeeded=batch.succeeded,
        errored=batch.errored,
        canceled=batch.canceled,
        expired=batch.expired,
    )


def batch_out(request: Request, session: Session, batch: Batch) -> BatchOut:
    return BatchOut(
        id=batch.id,
        processing_status=batch.status,
        request_counts=counts(batch),
        request_total=batch.request_total,
        metadata=batch.meta,
        webhook_url=batch.webhook_url,
        created_at=batch.created_at,
        expires_at=batch.expires_at,
        ended_at=batch.ended_at,
        cancel_initiated_at=batch.cancel_initiated_at,
        usage=UsageCost.model_validate(service.usage(batch)),
        estimated_completion_at=service.estimated_completion(batch, now=utcnow()),
        results_url=link(request, "batch_results", batch_id=batch.id),
    )
