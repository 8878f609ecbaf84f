"""A batch made from uploaded documents: one request per file, its text put into a prompt template.

`prompt` holds `{document}` and/or `{filename}`. With `{document}` the filled prompt is the user turn (and
`system`, if given, the system prompt); without it the prompt is the system prompt (after `system`, if given) and
the document alone is the user turn. Each file is read, checked and handed to `service.create` one at a time.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Json

from service.api.errors import APIError
from service.batches.extract import ExtractError, TooLarge, extract
from service.batches.service import RawRequest
from service.catalog import MODELS, ModelInfo
from service.jobs.validation import check_request

PLACEHOLDERS = re.compile(r"\{(document|filename)\}")
_NOT_ID = re.compile(r"[^a-zA-Z0-9_-]+")
MAX_CUSTOM_ID = 64
# Keys the service builds from the documents and the prompt; `params` may not set them.
_BUILT = {"anthropic": ("messages", "system"), "openai": ("messages",)}


class DocumentForm(BaseModel):
    """The text fields of `POST /v1/batches/documents` (batch options are parsed apart, as for `/v1/batches`)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A MiniMax model, e.g. MiniMax-M2.7.")
    prompt: str = Field(
        min_length=1,
        description="Template filled per file: `{document}` = the file's text, `{filename}` = its name. "
        "Without `{document}` it is the system prompt and the document is the user turn.",
    )
    system: str | None = Field(None, description="A system prompt, used as written.")
    params: Json[dict[str, Any]] = Field(
        default_factory=dict,
        description='A JSON object merged into every request\'s params, e.g. {"max_tokens": 1024}.',
    )
    format: Literal["anthropic", "openai"] = Field("anthropic", description="The body shape: anthropic | openai.")


@dataclass(frozen=True, kw_only=True, slots=True)
class Upload:
    filename: str | None
    file: IO[bytes]


def basename(filename: str) -> str:
    """The name without any directories a client sent along (either slash)."""
    return re.split(r"[\\/]", filename)[-1]


def fill(template: str, *, document: str, filename: str) -> str:
    """Fill the placeholders in one pass, so a document that contains `{filename}` stays as written."""
    values = {"document": document, "filename": filename}
    return PLACEHOLDERS.sub(lambda m: values[m[1]], template)


def build_params(form: DocumentForm, *, document: str, filename: str) -> dict[str, Any]:
    """The Messages (anthropic) or Chat Completions (openai) body for one document, without `model`."""
    if "{document}" in form.prompt:
        system, user = form.system, fill(form.prompt, document=document, filename=filename)
    else:
        instructions = fill(form.prompt, document=document, filename=filename)
        system, user = "\n\n".join(s for s in (form.system, instructions) if s), document
    params = dict(form.params)
    if form.format == "anthropic":
        if system:
            params["system"] = system
        params["messages"] = [{"role": "user", "content": user}]
    else:
        head = [{"role": "system", "content": system}] if system else []
        params["messages"] = [*head, {"role": "user", "content": user}]
    return params


class CustomIds:
    """custom_id from a file name: its stem, reduced to [a-zA-Z0-9_-] (accents folded), 64 characters at most;
    a repeated name gets -2, -3, ... in upload order."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    @staticmethod
    def base(filename: str) -> str:
        name = basename(filename)
        stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
        ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
        return _NOT_ID.sub("_", ascii_stem).strip("_")[:MAX_CUSTOM_ID] or "document"

    def take(self, filename: str) -> str:
        base = self.base(filename)
        candidate, n = base, 1
        while candidate in self.used:
            n += 1
            suffix = f"-{n}"
            candidate = base[: MAX_CUSTOM_ID - len(suffix)] + suffix
        self.used.add(candidate)
        return candidate


def _file_error(index: int, name: str, message: str, type: str = "invalid_request") -> APIError:
    return APIError(422, type, f'files[{index}] ("{name}"): {message}', field=f"files[{index}]")


def _too_large(index: int, name: str, info: ModelInfo, estimate: str) -> APIError:
    largest = max(MODELS.values(), key=lambda m: m.context_window)
    fix = "; split it"
    if largest.context_window > info.context_window:
        fix += f", or use {largest.name} ({largest.context_window:,} tokens)"
    return _file_error(
        index,
        name,
        f"{estimate} exceed {info.name}'s context window of {info.context_window:,} tokens{fix}",
        "context_window_exceeded",
    )


def check_form(form: DocumentForm) -> ModelInfo:
    """Check the fields every request shares before any file is read; the errors name the form field."""
    for key in _BUILT[form.format]:
        if key in form.params:
            hint = "use the `system` field" if key == "system" else "it is built from `prompt` and the files"
            raise APIError(422, "invalid_request", f"params.{key}: set by this endpoint; {hint}", field=f"params.{key}")
    try:
        checked = check_request(model=form.model, fmt=form.format, params=build_params(form, document="", filename=""))
    except APIError as exc:
        if exc.type != "context_window_exceeded":
            raise
        # Over the window with an empty document: max_tokens leaves no room for any.
        field = "params.max_tokens" if "max_tokens" in form.params else "params.max_completion_tokens"
        raise APIError(
            422, exc.type, f"{field}: leaves no room for the documents; {exc.message}", field=field
        ) from None
    return checked.model


def document_requests(form: DocumentForm, uploads: Sequence[Upload], info: ModelInfo) -> Iterator[RawRequest]:
    """One request per upload, made when `service.create` asks for it. Each file is closed once read, so its
    spooled bytes go as soon as its text is in the request; a bad file raises an APIError naming it."""
    ids = CustomIds()
    # More characters than this is more than the window whatever they are (a character is >= 1/4 token).
    max_chars = 4 * info.context_window
    for index, upload in enumerate(uploads):
        name = basename(upload.filename or "") or f"file {index}"
        try:
            text = extract(name, upload.file, max_chars=max_chars)
        except ExtractError as exc:
            raise _file_error(index, name, str(exc)) from None
        except TooLarge as exc:
            raise _too_large(index, name, info, f"estimated at least {exc.at_least:,} input tokens") from None
        finally:
            upload.file.close()
        params = build_params(form, document=text, filename=name)
        # `service.create` checks again; checking here first lets the error name the file, not "request 3".
        try:
            check_request(model=form.model, fmt=form.format, params=params)
        except APIError as exc:
            if exc.type != "context_window_exceeded":
                raise
            raise _too_large(index, name, info, exc.message.removeprefix("params.messages: ")) from None
        yield RawRequest(
            index=index,
            data={"custom_id": ids.take(name), "model": form.model, "format": form.format, "params": params},
        )
