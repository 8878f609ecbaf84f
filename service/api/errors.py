"""One error shape on every endpoint: {"error": {"type", "message", "field"}}."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException


class APIError(Exception):
    """An error the client can act on. Raised by services; rendered by the handler below."""

    def __init__(self, status: int, type: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.field = field


def not_found(what: str, ident: str) -> APIError:
    return APIError(404, "not_found", f"{what} {ident!r} was not found")


def error_body(type: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"type": type, "message": message, "field": field}}


def field_path(loc: tuple[int | str, ...]) -> str | None:
    """('body', 'params', 'messages', 0) -> 'params.messages[0]'."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def _json_position(exc: RequestValidationError, error: Any) -> str:
    """ "the body is not valid JSON at line L, column C: why" (FastAPI gives the offset and keeps the text)."""
    loc, doc = tuple(error.get("loc", ())), exc.body
    why = (error.get("ctx") or {}).get("error") or error.get("msg")
    if len(loc) == 2 and isinstance(loc[1], int) and isinstance(doc, str | bytes):
        text = doc.decode(errors="replace") if isinstance(doc, bytes) else doc
        pos = loc[1]
        line, column = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
        return f"the body is not valid JSON at line {line}, column {column}: {why}"
    return f"the body is not valid JSON: {why}"


def _validation_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "value_error"}
    if first.get("type") == "json_invalid":
        return JSONResponse(error_body("invalid_json", _json_position(exc, first)), 400)
    field = field_path(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value"))
    # pydantic prefixes custom errors with "Value error, "; the user needs only the reason.
    message = message.removeprefix("Value error, ")
    if field:
        message = f"{field}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return JSONResponse(error_body("invalid_request", message, field), 422)


def _api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(error_body(exc.type, exc.message, exc.field), exc.status, headers=headers)


def _http_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kinds = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 503: "overloaded"}
    return JSONResponse(
        error_body(kinds.get(exc.status_code, "http_error"), str(exc.detail)),
        exc.status_code,
        headers=getattr(exc, "headers", None),
    )


def _data_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    # A value Postgres cannot store (a NUL in an id or a filter, a number out of range) is the client's mistake.
    return JSONResponse(
        error_body("invalid_request", "a value in the request cannot be stored or searched (e.g. a NUL character)"),
        400,
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(DataError, _data_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(APIError, _api_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
