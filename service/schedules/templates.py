"""A schedule's template: checked when the schedule is stored, and turned into a job or a batch at each run
through the same service functions as POST /v1/jobs, /v1/batches and /v1/batches/documents.

Every run's job or batch carries `metadata.schedule_id`, so `GET /v1/jobs?metadata[schedule_id]=...` finds them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy.orm import Session

from service import netguard
from service.api.errors import APIError
from service.batches import service as batches
from service.batches.documents import DocumentForm, check_form, document_requests
from service.batches.schemas import BatchOptions
from service.batches.service import RawRequest
from service.config import Settings
from service.jobs import service as jobs
from service.models import ApiKey
from service.schedules import sources
from service.schedules.schemas import BatchTemplate, DocumentSource, Template

# Room is left in the 16 metadata pairs for the schedule_id every run gets.
MAX_TEMPLATE_METADATA = 15


def prefixed(exc: APIError, prefix: str) -> APIError:
    """The same error, its field and message placed under `prefix` (e.g. params.x -> template.job.params.x)."""
    if exc.field is None or exc.field.startswith(prefix):
        return exc  # not about a field of the template (over budget, say), or already placed
    field = f"{prefix}.{exc.field}"
    message = exc.message
    if message.startswith(exc.field):
        message = field + message[len(exc.field) :]
    else:
        message = f"{field}: {message}"
    return APIError(exc.status, exc.type, message, field=field)


def _check_metadata(metadata: dict[str, str], prefix: str) -> None:
    if len(metadata) > MAX_TEMPLATE_METADATA:
        field = f"{prefix}.metadata"
        raise APIError(
            422,
            "invalid_request",
            f"{field}: at most {MAX_TEMPLATE_METADATA} pairs in a schedule (each run adds schedule_id)",
            field=field,
        )


def _check_webhook(url: str | None, field: str, settings: Settings) -> None:
    if url:
        netguard.check_url(url, field=field, allow_loopback=settings.webhook_allow_loopback)


def _batch_requests(template: BatchTemplate) -> Iterator[RawRequest]:
    return (RawRequest(index=i, data=r) for i, r in enumerate(template.requests))


def _options(source: BatchTemplate | DocumentSource, metadata: dict[str, str]) -> BatchOptions:
    return BatchOptions(metadata=metadata, webhook_url=source.webhook_url, completion_window=source.completion_window)


def _form(source: DocumentSource) -> DocumentForm:
    # `params` is a JSON-text field on the form (it comes from multipart fields there).
    return DocumentForm.model_validate(
        {
            "model": source.model,
            "prompt": source.prompt,
            "system": source.system,
            "params": json.dumps(source.params),
            "format": source.format,
        }
    )


def validate(session: Session, *, template: Template, key: ApiKey, settings: Settings) -> None:
    """Refuse, before the schedule is stored, any template whose runs would certainly fail (422 naming the field
    under `template.`). Budgets are not checked here: they may change before the first run."""
    if template.job is not None:
        _check_metadata(template.job.metadata, "template.job")
        try:
            jobs.estimate(body=template.job, settings=settings)
        except APIError as exc:
            raise prefixed(exc, "template.job") from None
        _check_webhook(template.job.webhook_url, "template.job.webhook_url", settings)
    elif template.batch is not None:
        _check_metadata(template.batch.metadata, "template.batch")
        # The batch intake itself checks every request: a savepoint makes it a dry run.
        savepoint = session.begin_nested()
        try:
            batches.create(
                session,
                key=key,
                requests=_batch_requests(template.batch),
                options=_options(template.batch, template.batch.metadata),
                settings=settings,
            )
        except APIError as exc:
            raise prefixed(exc, "template.batch") from None
        finally:
            savepoint.rollback()
    elif template.documents is not None:
        source = template.documents
        _check_metadata(source.metadata, "template.documents")
        sources.allowed_root(source.directory, settings)
        sources.check_pattern(source.pattern)
        try:
            check_form(_form(source))
        except APIError as exc:
            raise prefixed(exc, "template.documents") from None
        _check_webhook(source.webhook_url, "template.documents.webhook_url", settings)


def create_run_target(
    session: Session, *, template: dict[str, Any], schedule_id: str, key: ApiKey, settings: Settings
) -> tuple[str | None, str | None]:
    """Submit the template as `key`: (job id, None) or (None, batch id). APIError says why it could not be."""
    parsed = Template.model_validate(template)
    if parsed.job is not None:
        body = parsed.job.model_copy(update={"metadata": {**parsed.job.metadata, "schedule_id": schedule_id}})
        try:
            job = jobs.create(session, key=key, body=body, settings=settings)
        except APIError as exc:
            raise prefixed(exc, "template.job") from None
        return job.id, None
    if parsed.batch is not None:
        options = _options(parsed.batch, {**parsed.batch.metadata, "schedule_id": schedule_id})
        try:
            batch = batches.create(
                session, key=key, requests=_batch_requests(parsed.batch), options=options, settings=settings
            )
        except APIError as exc:
            raise prefixed(exc, "template.batch") from None
        return None, batch.id
    source = parsed.documents
    assert source is not None
    files = sources.list_files(source.directory, source.pattern, settings)
    form = _form(source)
    try:
        info = check_form(form)
        requests = document_requests(form, sources.LazyUploads(files), info)
        options = _options(source, {**source.metadata, "schedule_id": schedule_id})
        batch = batches.create(session, key=key, requests=requests, options=options, settings=settings)
    except APIError as exc:
        raise prefixed(exc, "template.documents") from None
    return None, batch.id
