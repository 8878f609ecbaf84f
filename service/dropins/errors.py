"""Errors on the drop-in routes, in the shape of the API they imitate.

The global handler renders our own shape; these routes catch errors inside the route handler instead (a route
class), so the official SDKs get the bodies and status codes they parse. Catching there means the request's
session would commit as if nothing went wrong, so the handler rolls it back first (see `remember_session`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.deps import SessionDep
from service.api.errors import APIError, field_path
from service.api.json_body import JSONRoute

Render = Callable[[APIError], JSONResponse]
_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 503: "overloaded"}


async def remember_session(request: Request, session: SessionDep) -> None:
    """Router dependency: keeps the request's session (the same one the route gets) for the rollback below."""
    request.state.dropin_session = session


def _rollback(request: Request) -> None:
    session: Session | None = getattr(request.state, "dropin_session", None)
    if session is not None:
        session.rollback()


def validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return APIError(400, "invalid_json", f"the body is not valid JSON: {first.get('msg')}")
    field = field_path(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return APIError(422, "invalid_request", f"{field}: {message}" if field else message, field=field)


def route_class(render: Render) -> type[APIRoute]:
    """An APIRoute whose errors (ours, request validation, HTTP) are rendered by `render`."""

    # JSONRoute: the body is parsed under service.validation's rules first (its APIError is rendered here too).
    class DropinRoute(JSONRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                headers: dict[str, str] = {}
                try:
                    return await handler(request)
                except APIError as exc:
                    error = exc
                except RequestValidationError as exc:
                    error = validation_error(exc)
                except StarletteHTTPException as exc:
                    error = APIError(exc.status_code, _HTTP_TYPES.get(exc.status_code, "http_error"), str(exc.detail))
                    headers = dict(exc.headers or {})  # Retry-After of a 503 (service.api.large_bodies)
                except DataError:
                    # A value Postgres cannot store or search (a NUL in an id): the client's mistake, in this API's
                    # shape (the global handler would answer in ours).
                    error = APIError(400, "invalid_request", "a value in the request cannot be stored or searched")
                _rollback(request)
                response = render(error)
                response.headers.update(headers)
                return response

            return guarded

    return DropinRoute


def with_field(error: APIError) -> str:
    """The message, naming the field at fault if it does not already."""
    if error.field and error.field not in error.message:
        return f"{error.field}: {error.message}"
    return error.message


# --- one request of a batch was refused ---------------------------------------------------------------------

_WHO = re.compile(r"^request \d+ \(line \d+(?:, custom_id (?P<custom_id>'.*?'))?\): (?P<reason>.*)$", re.S)
_FIELD = re.compile(r"^requests\[(?P<index>\d+)\](?:\.(?P<inner>.*))?$")


@dataclass(frozen=True, kw_only=True, slots=True)
class LineError:
    """A batch service error about one request, taken apart so each drop-in can name things its own way."""

    index: int
    custom_id: str | None  # quoted, as the service wrote it
    field: str  # inside the request as the service sees it: "", "custom_id", "model", "params.temperature"
    reason: str  # without the field prefix


def line_error(error: APIError) -> LineError | None:
    who = _WHO.match(error.message)
    where = _FIELD.match(error.field or "")
    if who is None or where is None:
        return None
    inner = where["inner"] or ""
    reason = who["reason"]
    if inner and reason.startswith(f"{inner}: "):
        reason = reason[len(inner) + 2 :]
    return LineError(index=int(where["index"]), custom_id=who["custom_id"], field=inner, reason=reason)


# --- Anthropic: {"type": "error", "error": {"type", "message"}} ---------------------------------------------

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Anthropic answers every client mistake with 400 (it has no 409, 415 or 422).
_ANTHROPIC_STATUS = {409: 400, 415: 400, 422: 400}


_ANTHROPIC_KNOWN = {*_ANTHROPIC_TYPES.values(), "api_error"}


# --- a failed job's upstream error, in HTTP terms --------------------------------------------------------------

# The HTTP status each MiniMax code stands for (reference/minimax-api.md, "Errors"), for failures MiniMax reported
# inside an HTTP 200 (`base_resp`, an in-stream error event) or with a status that does not say what happened.
_STATUS_BY_CODE = {
    **dict.fromkeys((2013, 1026, 1027, 1042), 400),
    **dict.fromkeys((1004, 2049), 401),
    1008: 402,
    2038: 403,
    **dict.fromkeys((1002, 1039, 1041, 2045, 2056), 429),
    **dict.fromkeys((1000, 1001, 1013, 1024, 1033), 500),
}
_STATUS_BY_CLASS = {"permanent": 400, "rate_limited": 429, "retryable": 500}
# Our own names for failures found in a 200 answer.
_STATUS_BY_OUR_TYPE = {"content_filtered": 400}


def failure_status(error: Mapping[str, Any]) -> int | None:
    """The HTTP status a failed job's error stands for: the upstream's own when it was a 4xx/5xx, else the one its
    MiniMax code (or our classification) stands for; never 200. None when MiniMax never answered at all."""
    status = error.get("http_status")
    code = error.get("minimax_code")
    if isinstance(status, int) and status >= 400:
        return status
    if isinstance(code, int) and code in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[code]
    if not isinstance(status, int):
        return None
    kind = str(error.get("type") or "")
    return _STATUS_BY_OUR_TYPE.get(kind) or _STATUS_BY_CLASS.get(str(error.get("classification")), 500)


def anthropic_error_type(
    status: int | None, given: str | None = None, *, error: Mapping[str, Any] | None = None
) -> str:
    """The Anthropic error type for a failure. A failed job's `error` decides by its MiniMax code first (a 2013
    is `invalid_request_error` whatever the HTTP status or type said: clients retry `api_error`), then by the
    type MiniMax's Anthropic API reported, then by the status."""
    if error is not None:
        code = error.get("minimax_code")
        if isinstance(code, int) and code in _STATUS_BY_CODE:
            return _ANTHROPIC_TYPES.get(_STATUS_BY_CODE[code], "api_error")
        mapped = failure_status(error)
        if given is not None and given in _ANTHROPIC_KNOWN and not (given == "api_error" and mapped != 500):
            return given
        return _ANTHROPIC_TYPES.get(mapped or 500, "api_error")
    if given is not None and given in _ANTHROPIC_KNOWN:
        return given
    return _ANTHROPIC_TYPES.get(status or 500, "api_error")


def render_anthropic(error: APIError) -> JSONResponse:
    status = _ANTHROPIC_STATUS.get(error.status, error.status)
    body = {"type": "error", "error": {"type": anthropic_error_type(status), "message": with_field(error)}}
    return JSONResponse(body, status)


# --- OpenAI: {"error": {"message", "type", "param", "code"}} ------------------------------------------------

# OpenAI answers invalid parameters with 400; 409 stays (a cancel of a finished batch is a ConflictError there).
_OPENAI_STATUS = {415: 400, 422: 400}


def render_openai(error: APIError) -> JSONResponse:
    status = _OPENAI_STATUS.get(error.status, error.status)
    if status == 401:
        kind, code = "invalid_request_error", "invalid_api_key"
    elif status >= 500:
        kind, code = "server_error", error.type
    else:
        kind, code = "invalid_request_error", error.type
    body = {"error": {"message": with_field(error), "type": kind, "param": error.field, "code": code}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status, headers=headers)
