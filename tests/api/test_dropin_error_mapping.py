"""A failed request as the drop-ins' results show it (issue 15.5): an Anthropic client must not retry a permanent
invalid-params error (it retries `api_error`), and an OpenAI error-file line never says 200 for a failure."""

from __future__ import annotations

from typing import Any

import pytest

from service.dropins.anthropic import result_line
from service.dropins.errors import anthropic_error_type, failure_status
from service.dropins.openai_objects import output_line
from service.models import Job


def failed(error: dict[str, Any]) -> Job:
    return Job(id="job_1", custom_id="req-1", status="failed", error=error)


INVALID_IN_200 = {
    "type": "base_resp",
    "message": "invalid params, context window exceeds limit",
    "classification": "permanent",
    "http_status": 200,
    "minimax_code": 2013,
}
INVALID_AS_API_ERROR = {
    "type": "api_error",
    "message": "invalid params (2013)",
    "classification": "permanent",
    "http_status": 500,
    "minimax_code": 2013,
}
BROKEN_STREAM = {"type": "stream_broken", "message": "cut", "classification": "retryable", "http_status": 200}
FILTERED = {"type": "content_filtered", "message": "flagged", "classification": "permanent", "http_status": 200}
NO_BALANCE_429 = {"type": "rate_limit_error", "message": "insufficient balance (1008)", "http_status": 429,
                  "classification": "permanent", "minimax_code": 1008}  # fmt: skip
OVERLOADED = {"type": "overloaded_error", "message": "busy", "classification": "retryable", "http_status": 529}
NEVER_ANSWERED = {"type": "connect_timeout", "message": "no answer", "classification": "retryable"}


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (INVALID_IN_200, "invalid_request_error"),
        (INVALID_AS_API_ERROR, "invalid_request_error"),
        (FILTERED, "invalid_request_error"),
        (NO_BALANCE_429, "billing_error"),
        (OVERLOADED, "overloaded_error"),
        (BROKEN_STREAM, "api_error"),
        (NEVER_ANSWERED, "api_error"),
    ],
)
def test_anthropic_results_name_the_error_by_what_happened(error: dict[str, Any], expected: str) -> None:
    line = result_line(failed(error))
    assert line["result"]["type"] == "errored"
    assert line["result"]["error"]["error"]["type"] == expected


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (INVALID_IN_200, 400),
        (INVALID_AS_API_ERROR, 500),  # the upstream's own status stays
        (BROKEN_STREAM, 500),
        (FILTERED, 400),
        (NO_BALANCE_429, 429),
        (OVERLOADED, 529),
    ],
)
def test_openai_error_file_carries_the_upstream_status_never_200(error: dict[str, Any], status: int) -> None:
    line = output_line(failed(error))
    assert line["response"]["status_code"] == status
    assert line["error"]["code"] == error["type"]


def test_openai_error_file_has_no_response_when_minimax_never_answered() -> None:
    line = output_line(failed(NEVER_ANSWERED))
    assert line["response"] is None
    assert failure_status(NEVER_ANSWERED) is None


def test_without_a_job_error_the_status_decides_as_before() -> None:
    assert anthropic_error_type(400) == "invalid_request_error"
    assert anthropic_error_type(None, "overloaded_error") == "overloaded_error"
