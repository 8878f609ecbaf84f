"""Turning MiniMax's error answers and transport failures into classified UpstreamErrors."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime

import httpx
import pytest

from workers.providers import Classification, UpstreamError, Usage
from workers.providers.errors import (
    code_from_message,
    parse_retry_after,
    payload_error,
    reset_delay_from_message,
    response_error,
    transport_error,
)

NOW = datetime(2026, 5, 15, 12, 0, 0, tzinfo=UTC)
USAGE_CAP = (
    "usage limit exceeded, 5-hour usage limit reached for Token Plan Starter (0/0 used), "
    "resets at 2026-05-15T15:00:00Z (2056)"
)


def answer(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(
        status, content=content, headers=headers, request=httpx.Request("POST", "https://api.minimax.io/x")
    )


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("invalid params, context window exceeds limit (2013)", 2013),
        ("insufficient balance (1008)", 1008),
        ("insufficient balance (1008).", 1008),
        ("insufficient balance (1008)  ", 1008),
        (USAGE_CAP, 2056),
        ("limit reached (0/0 used)", None),  # a bracket that is not a code
        ("code (2013) is not at the end", None),
        ("no code at all", None),
        ("", None),
        (None, None),
    ],
)
def test_code_from_message(message: str | None, code: int | None) -> None:
    assert code_from_message(message) == code


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30", 30.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-5", 0.0),
        ("Fri, 15 May 2026 12:01:30 GMT", 90.0),
        ("Fri, 15 May 2026 11:00:00 GMT", 0.0),  # already past
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_reset_time_from_the_usage_cap_message() -> None:
    assert reset_delay_from_message(USAGE_CAP, now=NOW) == 3 * 3600
    assert reset_delay_from_message("usage limit exceeded (2056)", now=NOW) is None


def test_anthropic_error_body_with_bracketed_code() -> None:
    body = {
        "type": "error",
        "request_id": "065651be",
        "error": {
            "type": "invalid_request_error",
            "message": "invalid params, context window exceeds limit (2013)",
        },
    }
    error = response_error(answer(400, body))
    assert (error.classification, error.http_status, error.minimax_code) == (
        Classification.PERMANENT,
        400,
        2013,
    )
    assert error.error_type == "invalid_request_error"
    assert error.message == "invalid params, context window exceeds limit (2013)"
    assert error.request_id == "065651be"
    assert error.usage is None


def test_insufficient_balance_as_http_500_is_permanent() -> None:
    body = {"type": "error", "error": {"type": "api_error", "message": "insufficient balance (1008)"}}
    error = response_error(answer(500, body))
    assert (error.classification, error.minimax_code) == (Classification.PERMANENT, 1008)


def test_usage_cap_waits_until_the_reset_time() -> None:
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": USAGE_CAP}}
    error = response_error(answer(429, body), now=NOW)
    assert error.classification is Classification.RATE_LIMITED
    assert error.retry_after == 3 * 3600


def test_retry_after_header_wins_over_message() -> None:
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": USAGE_CAP}}
    error = response_error(answer(429, body, {"Retry-After": "12"}), now=NOW)
    assert error.retry_after == 12.0


def test_openai_error_body_and_base_resp() -> None:
    body = {"error": {"message": "rate limit exceeded", "type": "rate_limit_error", "code": "1002"}}
    error = response_error(answer(429, body))
    assert (error.classification, error.minimax_code, error.error_type) == (
        Classification.RATE_LIMITED,
        1002,
        "rate_limit_error",
    )

    body2 = {"choices": None, "base_resp": {"status_code": 2049, "status_msg": "invalid api key"}}
    error2 = response_error(answer(401, body2))
    assert (error2.classification, error2.minimax_code, error2.error_type) == (
        Classification.PERMANENT,
        2049,
        "base_resp",
    )
    assert error2.message == "invalid api key"


@pytest.mark.parametrize(
    ("status", "body", "classification", "error_type"),
    [
        (502, b"<html><body>502 Bad Gateway</body></html>", Classification.RETRYABLE, "http_error"),
        (529, b"", Classification.RETRYABLE, "overloaded_error"),
        (401, b"\xff\xfe not utf-8", Classification.PERMANENT, "authentication_error"),
        (429, b"[1, 2]", Classification.RATE_LIMITED, "rate_limit_error"),
        (503, b'{"error": null}', Classification.RETRYABLE, "http_error"),
    ],
)
def test_bodies_that_are_not_error_json_do_not_crash(
    status: int, body: bytes, classification: Classification, error_type: str
) -> None:
    error = response_error(answer(status, body))
    assert (error.classification, error.error_type, error.http_status) == (classification, error_type, status)
    assert error.message  # something a user can read


def test_error_event_in_a_200_stream_is_classified_by_its_type_or_code() -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    error = payload_error(overloaded, http_status=200)
    assert error is not None
    assert error.classification is Classification.RETRYABLE
    assert error.error_type == "overloaded_error"
    assert error.http_status == 200

    bad = {
        "type": "error",
        "error": {"type": "api_error", "message": "output content flagged as sensitive (1027)"},
    }
    error = payload_error(bad, http_status=200)
    assert error is not None
    assert (error.classification, error.minimax_code) == (
        Classification.PERMANENT,
        1027,
    )


def test_success_payloads_carry_no_error() -> None:
    assert payload_error({"choices": [], "base_resp": {"status_code": 0, "status_msg": ""}}, http_status=200) is None
    assert payload_error({"type": "message", "content": []}, http_status=200) is None


@pytest.mark.parametrize(
    ("exc", "in_body", "error_type"),
    [
        (httpx.ConnectTimeout("t"), False, "connect_timeout"),
        (httpx.ReadTimeout("t"), False, "read_timeout"),
        (httpx.ReadTimeout("t"), True, "read_timeout"),
        (httpx.ConnectError("refused"), False, "connection_error"),
        (httpx.RemoteProtocolError("peer closed"), False, "connection_error"),
        (httpx.RemoteProtocolError("peer closed"), True, "stream_broken"),
        (httpx.ReadError("reset"), True, "stream_broken"),
    ],
)
def test_transport_failures_are_retryable(exc: httpx.RequestError, in_body: bool, error_type: str) -> None:
    error = transport_error(exc, in_body=in_body)
    assert isinstance(error, UpstreamError)
    assert (error.error_type, error.classification, error.http_status) == (
        error_type,
        Classification.RETRYABLE,
        None,
    )


def test_request_id_from_the_body_else_the_header() -> None:
    body = {"type": "error", "request_id": "from-body", "error": {"type": "api_error", "message": "x (1000)"}}
    assert response_error(answer(500, body, {"x-request-id": "from-header"})).request_id == "from-body"
    assert response_error(answer(502, b"bad gateway", {"x-request-id": "from-header"})).request_id == "from-header"


def test_upstream_error_survives_pickling() -> None:
    # Celery pickles exceptions that leave a task; a keyword-only constructor must not break that.
    error = response_error(answer(429, {"type": "error", "error": {"type": "rate_limit_error", "message": USAGE_CAP}}))
    error.usage = Usage(input_tokens=5, output_tokens=2)
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, UpstreamError)
    assert (copy.classification, copy.minimax_code, copy.http_status, copy.usage, copy.message) == (
        Classification.RATE_LIMITED,
        2056,
        429,
        Usage(input_tokens=5, output_tokens=2),
        USAGE_CAP,
    )
