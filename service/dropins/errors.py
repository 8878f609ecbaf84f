"""Errors on the drop-in routes, in the shape of the API they imitate.

The global handler renders our own shape; these routes catch errors inside the route handler instead (a route
class), so the official SDKs get the bodies and status codes they parse. Catching there means the request's
session would commit as if nothing went wrong, so the handler rolls it back first (see `remember_session`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
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
_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


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
                try:
                    return await handler(request)
                except APIError as exc:
                    error = exc
                except RequestValidationError as exc:
                    error = validation_error(exc)
                except StarletteHTTPException as exc:
                    error = APIError(exc.status_code, _HTTP_TYPES.get(exc.status_code, "http_error"), str(exc.detail))
                except DataError:
                    # A value Postgres cannot store or search (a NUL in an id): the client's mistake, in this API's
                    # shape (the global handler would answer in ours).
                    error = APIError(400, "invalid_request", "a value in the request cannot be stored or searched")
                _rollback(request)
                return render(error)

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


def anthropic_error_type(status: int | None, given: str | None = None) -> str:
    """`given` if Anthropic has that error type (MiniMax's Anthropic API reports them), else one by status."""
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
