"""Batch use cases: create (validated line by line, one transaction), read, list, cancel, delete, results."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from service import dispatch, netguard
from service.api.errors import APIError, field_path, not_found
from service.batches import repository, tally
from service.batches.schemas import MAX_REQUESTS, BatchOptions, BatchRequestIn
from service.config import Settings
from service.db import new_id, utcnow
from service.jobs.schemas import CostRange, Estimate
from service.jobs.validation import CheckedRequest, check_request
from service.limits import quotas
from service.models import ApiKey, Batch, BatchStatus, Job, JobStatus
from service.pricing import is_priority
from service.upstream_params import with_reasoning_split
from service.usage import admission

ID_PREFIX = {"native": "batch", "anthropic": "msgbatch", "openai": "batch"}
FINISHED = ("succeeded", "failed", "canceled", "expired")


@dataclass(frozen=True, kw_only=True, slots=True)
class RawRequest:
    index: int  # 0-based position: the JSON array index, or the JSONL line number minus one
    data: Any
    # The JSON text it came from was seen to hold no NUL (see `json_text_nul_free`): validation skips that walk.
    nul_free: bool = False


def json_text_nul_free(text: bytes) -> bool:
    """JSON carries a NUL only as the escape `\\u0000` (a raw control character is invalid), or as raw zero bytes
    in UTF-16/32 text, which `json.loads` also accepts: neither present means no NUL anywhere in the value."""
    return b"\\u0000" not in text and b"\x00" not in text


def _line_error(index: int, custom_id: str | None, error: APIError) -> APIError:
    inner = error.field or ""
    who = f"request {index} (line {index + 1}" + (f", custom_id {custom_id!r})" if custom_id else ")")
    field = f"requests[{index}]" + (f".{inner}" if inner else "")
    return APIError(error.status, error.type, f"{who}: {error.message}", field=field)


def _validate(raw: RawRequest) -> BatchRequestIn:
    if not isinstance(raw.data, dict):
        raise _line_error(raw.index, None, APIError(422, "invalid_request", "each request must be a JSON object"))
    custom_id = raw.data.get("custom_id") if isinstance(raw.data.get("custom_id"), str) else None
    try:
        return BatchRequestIn.model_validate(raw.data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = field_path(tuple(first["loc"])) or ""
        message = f"{field}: {first['msg']}" if field else str(first["msg"])
        raise _line_error(raw.index, custom_id, APIError(422, "invalid_request", message, field=field)) from None


def checked_requests(requests: Iterable[RawRequest]) -> Iterator[tuple[BatchRequestIn, CheckedRequest]]:
    """Each request validated like a single job, custom_ids unique; the first bad line raises naming it."""
    seen: set[str] = set()
    for count, raw in enumerate(requests, start=1):
        request = _validate(raw)
        if request.custom_id in seen:
            raise _line_error(
                raw.index,
                request.custom_id,
                APIError(422, "invalid_request", "custom_id is already used in this batch", field="custom_id"),
            )
        seen.add(request.custom_id)
        try:
            checked = check_request(
                model=request.model, fmt=request.format, params=request.params, nul_free=raw.nul_free
            )
        except APIError as exc:
            raise _line_error(raw.index, request.custom_id, exc) from None
        if count > MAX_REQUESTS:
            raise APIError(
                422, "too_many_requests", f"a batch holds at most {MAX_REQUESTS:,} requests", field="requests"
            )
        yield request, checked


def estimate(requests: Iterable[RawRequest], *, settings: Settings) -> Estimate:
    """What the batch would cost (`dry_run`): every line validated, nothing stored."""
    prices = settings.price_table()
    n = tokens_in = tokens_out = 0
    least = most = Decimal(0)
    models: set[str] = set()
    for request, checked in checked_requests(requests):
        e = admission.estimate(
            prices,
            model=checked.model,
            input_tokens=checked.estimated_input_tokens,
            max_tokens=checked.max_tokens,
            priority=is_priority(request.params),
        )
        n += 1
        tokens_in += e.estimated_input_tokens
        tokens_out += e.max_output_tokens
        least += e.cost_min
        most += e.cost_max
        models.add(e.model)
    if n == 0:
        raise APIError(422, "invalid_request", "a batch needs at least one request", field="requests")
    return Estimate(
        model=models.pop() if len(models) == 1 else "mixed",
        requests=n,
        estimated_input_tokens=tokens_in,
        max_output_tokens=tokens_out,
        cost_usd=CostRange(min=least, max=most),
        price_version=prices.version,
    )


def create(
    session: Session,
    *,
    key: ApiKey,
    requests: Iterable[RawRequest],
    options: BatchOptions,
    settings: Settings,
    api: str = "native",
    input_file_id: str | None = None,
    endpoint: str | None = None,
) -> Batch:
    """Validate every request and store the batch with all of them, or raise naming the first bad line; the
    caller's transaction then rolls back and nothing is stored. Rows stream into the database in chunks, so a
    256 MB upload never sits in memory whole."""
    if options.webhook_url:
        netguard.check_url(options.webhook_url, field="webhook_url", allow_loopback=settings.webhook_allow_loopback)
    quotas.precheck_batch(session, key=key, settings=settings)  # before the body is read (issue 14)
    now = utcnow()
    expires_at = now + timedelta(seconds=options.window_seconds())
    batch = Batch(
        id=new_id(ID_PREFIX[api]),
        tenant_id=key.tenant_id,
        api_key_id=key.id,
        api=api,
        status=BatchStatus.IN_PROGRESS,
        meta=options.metadata,
        webhook_url=options.webhook_url,
        input_file_id=input_file_id,
        endpoint=endpoint,
        request_total=0,
        processing=0,
        succeeded=0,
        errored=0,
        canceled=0,
        expired=0,
        created_at=now,
        updated_at=now,
        expires_at=expires_at,
    )
    repository.add(session, batch)
    total = 0
    with repository.job_writer(session) as write:
        for request, checked in checked_requests(requests):
            total += 1
            write(
                {
                    "id": new_id("job"),
                    "tenant_id": key.tenant_id,
                    "api_key_id": key.id,
                    "batch_id": batch.id,
                    "custom_id": request.custom_id,
                    "model": checked.model.name,
                    "format": request.format,
                    "status": JobStatus.QUEUED.value,
                    "priority": 0,
                    "metadata": {},
                    "params": with_reasoning_split(request.params, request.format, options.reasoning_split),
                    "estimated_input_tokens": checked.estimated_input_tokens,
                    "max_tokens": checked.max_tokens,
                    "max_attempts": settings.default_max_attempts,
                    "attempt_count": 0,
                    "next_attempt_at": now,
                    "output_tokens_so_far": 0,
                    "created_at": now,
                    "updated_at": now,
                    "expires_at": expires_at,
                    "input_tokens": 0,
                    "output_tokens": 0,
                    "cache_read_tokens": 0,
                    "cache_write_tokens": 0,
                    "cost_usd": 0,
                    "budget_reserved": False,
                    "webhook_url": None,
                }
            )
    if total == 0:
        raise APIError(422, "invalid_request", "a batch needs at least one request", field="requests")
    repository.set_total(session, batch_id=batch.id, total=total)
    quotas.admit_batch(session, key=key, settings=settings, requests=total)  # exact, locked last (issue 14)
    session.refresh(batch)
    dispatch.wake_scheduler_after_commit(session, settings)
    return batch


def get(session: Session, *, key: ApiKey, batch_id: str, api: str | None = None) -> Batch:
    batch = repository.get(session, tenant_id=key.tenant_id, batch_id=batch_id, api=api)
    if batch is None:
        raise not_found("batch", batch_id)
    return batch


def usage(batch: Batch) -> dict[str, Any]:
    return {
        "input_tokens": batch.input_tokens,
        "output_tokens": batch.output_tokens,
        "cache_read_tokens": batch.cache_read_tokens,
        "cache_write_tokens": batch.cache_write_tokens,
        "cost_usd": batch.cost_usd,
    }


def estimated_completion(batch: Batch, *, now: datetime) -> datetime | None:
    """Now plus what is left at the rate requests have finished so far; None until one has finished."""
    if batch.status == BatchStatus.ENDED:
        return batch.ended_at
    done = batch.request_total - batch.processing
    started = batch.started_at
    if done <= 0 or started is None:
        return None
    elapsed = max((now - started).total_seconds(), 1e-3)
    seconds = batch.processing * elapsed / done
    return now + timedelta(seconds=min(seconds, 10 * 365 * 86400)) if math.isfinite(seconds) else None


def cancel(session: Session, *, key: ApiKey, batch_id: str, api: str | None = None) -> Batch:
    batch = get(session, key=key, batch_id=batch_id, api=api)
    if batch.status == BatchStatus.IN_PROGRESS:
        repository.start_cancel(session, batch_id=batch.id, now=utcnow())
        session.refresh(batch)
        tally.current(session, [batch])
    return batch


def delete(session: Session, *, key: ApiKey, batch_id: str, api: str | None = None) -> None:
    batch = get(session, key=key, batch_id=batch_id, api=api)
    if batch.status != BatchStatus.ENDED:
        raise APIError(
            409, "batch_not_ended", f"batch {batch_id!r} is {batch.status}; cancel it and wait until it has ended"
        )
    repository.delete_batch(session, batch_id=batch.id)


def iter_results(
    factory: sessionmaker[Session], *, batch_id: str, statuses: Iterable[str] = FINISHED, page: int = 500
) -> Iterator[Job]:
    """Every finished request of a batch, in pages with a short session each: constant memory, and the stream
    never holds a transaction open while the client reads slowly."""
    wanted = tuple(statuses)
    after: str | None = None
    while True:
        with factory() as session:
            rows = repository.results_page(session, batch_id=batch_id, after=after, statuses=wanted, limit=page)
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1].id
