"""`POST /v1/batches/documents`: a batch from uploaded files, one request per file.

The form is read by hand, after authentication (a declared `File()` parameter would make FastAPI read a
256 MB upload before it knows who sent it). Starlette spools each file to disk past 1 MB; the files are then
read one at a time while `service.create` stores the requests.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.api.deps import CurrentKey, SessionDep, SettingsDep
from service.api.errors import APIError
from service.batches import intake, present, service
from service.batches.documents import DocumentForm, Upload, check_form, document_requests
from service.batches.extract import SUFFIXES
from service.batches.schemas import BatchOut

router = APIRouter(prefix="/v1/batches", tags=["batches"])

MAX_FILES = 10_000
_OPTION_FIELDS = ("metadata", "webhook_url", "completion_window")
# Blank optional fields, as an HTML form sends them, mean "not given".
_OPTIONAL_FIELDS = ("system", "params", "format", *_OPTION_FIELDS)
_ACCEPTED = ", ".join(SUFFIXES)


def _body_schema() -> dict[str, Any]:
    form = DocumentForm.model_json_schema()
    properties: dict[str, Any] = {
        "files": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": f"The documents, one request each ({_ACCEPTED}). The custom_id is the file name without "
            "its extension, reduced to letters, digits, `_` and `-`; repeats get -2, -3, ...",
        },
        **form["properties"],
        "metadata": {"type": "string", "description": "A JSON object of up to 16 string pairs, for the batch."},
        "webhook_url": {"type": "string", "description": "Called when the batch ends."},
        "completion_window": {"type": "string", "example": "24h", "description": "24h (default), 90m, ..."},
    }
    return {"type": "object", "required": ["files", *form.get("required", [])], "properties": properties}


_DESCRIPTION = f"""Upload documents ({_ACCEPTED}) as `files` fields of a multipart form; each one becomes one
request of a new batch, answered like `POST /v1/batches`.

Text is taken from PDF (text layer; scanned pages need OCR first), DOCX (paragraphs and tables), HTML (scripts and
styles dropped) and UTF-8 text files.

`prompt` is a template with two placeholders, filled per file:

- `{{document}}`: the file's text;
- `{{filename}}`: the file's name as uploaded.

With `{{document}}`, the filled prompt is the user turn and `system` (optional) the system prompt. Without it, the
prompt is the system prompt (after `system`, if given) and the document alone is the user turn. `params` (a JSON
object) is merged into every request: `max_tokens`, `temperature`, ... `format` picks the body shape:
`anthropic` (Messages, the default) or `openai` (Chat Completions).

A file that is unsupported, unreadable, empty, or longer than the model's context window (the message gives the
token estimate and the window) rejects the whole batch with a 422 whose `field` is `files[i]` and whose message
names the file; nothing is stored."""


@router.post(
    "/documents",
    status_code=202,
    response_model=BatchOut,
    summary="Submit a batch of documents: one request per file, from a prompt template",
    description=_DESCRIPTION,
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _body_schema()}}}},
)
async def create_document_batch(
    request: Request, session: SessionDep, key: CurrentKey, settings: SettingsDep
) -> BatchOut:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # A form without files arrives urlencoded; it is read so the answer can say that `files` are missing.
    if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise APIError(
            415,
            "unsupported_media_type",
            "send the documents as multipart/form-data `files` fields",
            field="content-type",
        )
    form = await request.form(max_files=MAX_FILES, max_fields=100)
    try:
        uploads: list[Upload] = []
        fields: dict[str, Any] = {}
        options: dict[str, Any] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "files":
                    raise APIError(422, "invalid_request", f"{name}: only `files` fields may hold files", field=name)
                uploads.append(Upload(filename=value.filename, file=value.file))
            elif name == "files":
                raise APIError(
                    422,
                    "invalid_request",
                    f"files[{len(uploads)}]: must be a file upload, not a text field",
                    field=f"files[{len(uploads)}]",
                )
            elif not (value == "" and name in _OPTIONAL_FIELDS):
                (options if name in _OPTION_FIELDS else fields)[name] = value
        if not uploads:
            raise APIError(422, "invalid_request", f"files: attach one or more documents ({_ACCEPTED})", field="files")
        try:
            document_form = DocumentForm.model_validate(fields)
        except ValidationError as exc:
            raise intake.options_error(exc) from None
        batch_options = intake.parse_options(options)
        info = check_form(document_form)
        requests = document_requests(document_form, uploads, info)
        batch = await run_in_threadpool(
            lambda: service.create(session, key=key, requests=requests, options=batch_options, settings=settings)
        )
        return await run_in_threadpool(present.batch_out, request, session, batch)
    finally:
        await form.close()
