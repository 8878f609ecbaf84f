"""Turning failed HTTP answers, in-band error payloads and transport exceptions into `UpstreamError`."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from workers.providers.base import Classification, UpstreamError, Usage, classify

# "invalid params, context window exceeds limit (2013)": MiniMax puts its code in brackets at the end.
_CODE_AT_END = re.compile(r"[(\[]\s*(\d{3,5})\s*[)\]][\s.]*$")
# "... 5-hour usage limit reached ..., resets at 2026-05-15T15:00:00Z (2056)"
_RESETS_AT = re.compile(r"resets?\s+at\s+(\d{4}-\d{2}-\d{2}[T ][0-9:.]+(?:Z|[+-]\d{2}:?\d{2})?)", re.IGNORECASE)
_RESETS_IN = re.compile(
    r"resets?\s+in\s+(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hrs|hours?)\b",
    re.IGNORECASE,
)

# Anthropic's error types by HTTP status: names an error whose body told us nothing, and lets an error event
# that arrives inside a 200 stream be classified like the status it stands for.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_STATUS_BY_TYPE = {v: k for k, v in _TYPE_BY_STATUS.items()} | {
    # OpenAI-style names an in-stream `error` object may carry
    "invalid_request": 400,
    "authentication": 401,
    "insufficient_quota": 402,
    "rate_limit_exceeded": 429,
    "server_error": 500,
    "overloaded": 529,
    # MiniMax's own type names, seen inside a stream or a 200 with no bracketed code (reference/minimax-api.md,
    # "Errors"): each is classified like the HTTP status it stands for.
    "bad_request_error": 400,
    "invalid_params_error": 400,
    "unauthorized_error": 401,
    "insufficient_balance_error": 402,
    "forbidden_error": 403,
    "sensitive_error": 400,
    "internal_server_error": 500,
    "internal_error": 500,
    "service_unavailable_error": 503,
    "timeout_error": 504,
}
# An error type nobody documents, with no code and no failing status, is retried like a server error: on purpose,
# and only within the job's attempt budget (workers/retry.py gives up after max_attempts), never forever.
_UNKNOWN_TYPE_STATUS = 500
# MiniMax's content-safety categories (`input_sensitive_type` / `output_sensitive_type`, text-chat-openai page).
SENSITIVE_TYPES = {
    1: "severe violation",
    2: "pornography",
    3: "advertising",
    4: "prohibited content",
    5: "abuse",
    6: "violence or terrorism",
    7: "other",
}
_REQUEST_ID_HEADERS = ("request-id", "x-request-id", "trace-id", "x-trace-id")
_MAX_MESSAGE = 2000


def code_from_message(message: str | None) -> int | None:
    """The MiniMax code in brackets at the end of an error message, e.g. `"... (2013)"` -> 2013."""
    if not message:
        return None
    match = _CODE_AT_END.search(message)
    return int(match.group(1)) if match else None


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date (never negative)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def reset_delay_from_message(message: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds until the reset time a usage-limit message (2056) announces, if it gives one."""
    if not message:
        return None
    if match := _RESETS_AT.search(message):
        try:
            when = datetime.fromisoformat(match.group(1).replace(" ", "T"))
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    if match := _RESETS_IN.search(message):
        amount, unit = float(match.group(1)), match.group(2).lower()
        return amount * (3600.0 if unit.startswith("h") else 60.0 if unit.startswith("m") else 1.0)
    return None


def _int_code(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _minimax_code(value: Any) -> int | None:
    code = _int_code(value)
    return code if code is not None and 1000 <= code <= 9999 else None


def base_resp_error(
    payload: Any, *, http_status: int | None, request_id: str | None = None, usage: Usage | None = None
) -> UpstreamError | None:
    """The error a `base_resp` with a non-zero `status_code` reports, else None."""
    if not isinstance(payload, Mapping):
        return None
    base_resp = payload.get("base_resp")
    if not isinstance(base_resp, Mapping):
        return None
    code = _int_code(base_resp.get("status_code"))
    if not code:
        return None
    message = str(base_resp.get("status_msg") or f"MiniMax status {code}")
    return UpstreamError(
        classification=classify(http_status=http_status, minimax_code=code),
        error_type="base_resp",
        message=message,
        http_status=http_status,
        minimax_code=code,
        retry_after=reset_delay_from_message(message),
        usage=usage,
        request_id=_str_or_none(payload.get("request_id")) or request_id or _str_or_none(payload.get("id")),
    )


def payload_error(
    payload: Mapping[str, Any],
    *,
    http_status: int | None,
    usage: Usage | None = None,
    request_id: str | None = None,
) -> UpstreamError | None:
    """The error an in-band payload reports: an `error` object (Anthropic `event: error` or OpenAI style) or a
    non-zero `base_resp`. Classified by its code, else by the HTTP status its error type stands for."""
    error = payload.get("error")
    details: Mapping[str, Any] | None = None
    if isinstance(error, Mapping):
        details = error
    elif isinstance(error, str) and error:
        details = {"message": error}
    if details is not None:
        message = str(details.get("message") or details.get("type") or "upstream error")[:_MAX_MESSAGE]
        error_type = str(details.get("type") or "error")
        code = code_from_message(message) or _minimax_code(details.get("code"))
        from_base = base_resp_error(payload, http_status=http_status)
        if from_base is not None and code is None:
            code = from_base.minimax_code
        if code is None and (error_type == "insufficient_balance_error" or "insufficient balance" in message.lower()):
            code = 1008  # MiniMax's own name for it, no bracketed code: permanent even when sent as HTTP 429
        status_for_class = http_status if http_status is not None and http_status >= 400 else None
        if status_for_class is None:
            status_for_class = _STATUS_BY_TYPE.get(error_type, _UNKNOWN_TYPE_STATUS)
        return UpstreamError(
            classification=classify(http_status=status_for_class, minimax_code=code),
            error_type=error_type,
            message=message,
            http_status=http_status,
            minimax_code=code,
            retry_after=reset_delay_from_message(message),
            usage=usage,
            request_id=_str_or_none(payload.get("request_id")) or request_id,
        )
    return base_resp_error(payload, http_status=http_status, request_id=request_id, usage=usage)


def content_filter_error(
    raw: Mapping[str, Any], *, answered: bool, usage: Usage | None, request_id: str | None
) -> UpstreamError | None:
    """A permanent `content_filtered` failure when MiniMax flagged the input or output (`input_sensitive` /
    `output_sensitive`) and sent no answer: an empty, flagged reply is not a success to bill as one. A flagged
    answer that still has content is left alone (the flag is kept in `raw`)."""
    if answered:
        return None
    flagged = [side for side in ("input", "output") if raw.get(f"{side}_sensitive") is True]
    if not flagged:
        return None
    reasons = []
    for side in flagged:
        kind = _int_code(raw.get(f"{side}_sensitive_type"))
        reasons.append(f"the {side}" + (f" ({SENSITIVE_TYPES.get(kind, f'type {kind}')})" if kind else ""))
    return UpstreamError(
        classification=Classification.PERMANENT,
        error_type="content_filtered",
        message=f"MiniMax's content filter flagged {' and '.join(reasons)} and sent no answer; not retried",
        http_status=200,
        minimax_code=1026 if "input" in flagged else 1027,
        usage=usage,
        request_id=request_id,
    )


def response_error(response: httpx.Response, *, now: datetime | None = None) -> UpstreamError:
    """The error for an HTTP answer >= 400 (its body must already be read). Never raises on odd bodies."""
    status = response.status_code
    header_id = next((response.headers[h] for h in _REQUEST_ID_HEADERS if h in response.headers), None)
    payload: Any = None
    try:
        payload = json.loads(response.content)
    except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead):
        payload = None
    error: UpstreamError | None = None
    if isinstance(payload, Mapping):
        error = payload_error(payload, http_status=status, request_id=header_id)
    if error is None:
        text = _body_text(response)
        code = code_from_message(text)
        error = UpstreamError(
            classification=classify(http_status=status, minimax_code=code),
            error_type=_TYPE_BY_STATUS.get(status, "http_error"),
            message=text or f"HTTP {status} {response.reason_phrase}".strip(),
            http_status=status,
            minimax_code=code,
            request_id=header_id,
        )
    retry_after = parse_retry_after(response.headers.get("retry-after"), now=now)
    if retry_after is None:
        retry_after = reset_delay_from_message(error.message, now=now)
    error.retry_after = retry_after
    return error


def transport_error(exc: httpx.RequestError, *, in_body: bool, usage: Usage | None = None) -> UpstreamError:
    """Map an httpx failure. A read timeout stays `read_timeout` even mid-body (a hung upstream); any other
    failure after the answer began is `stream_broken`. All are retryable."""
    if isinstance(exc, httpx.ConnectTimeout):
        error_type = "connect_timeout"
    elif isinstance(exc, httpx.ReadTimeout):
        error_type = "read_timeout"
    elif in_body:
        error_type = "stream_broken"
    else:
        error_type = "connection_error"
    return UpstreamError(
        classification=Classification.RETRYABLE,
        error_type=error_type,
        message=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
        usage=usage,
        unsent=isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout),
    )


def stream_broken(
    message: str, *, http_status: int | None, usage: Usage | None, request_id: str | None
) -> UpstreamError:
    return UpstreamError(
        classification=Classification.RETRYABLE,
        error_type="stream_broken",
        message=message,
        http_status=http_status,
        usage=usage,
        request_id=request_id,
    )


def invalid_response(message: str, *, http_status: int | None, request_id: str | None = None) -> UpstreamError:
    return UpstreamError(
        classification=Classification.RETRYABLE,
        error_type="invalid_response",
        message=message,
        http_status=http_status,
        request_id=request_id,
    )


def _body_text(response: httpx.Response) -> str:
    try:
        content = response.content
    except httpx.ResponseNotRead:
        return ""
    try:
        text = content.decode(response.encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        text = content.decode("utf-8", errors="replace")
    return text.strip()[:_MAX_MESSAGE]


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
