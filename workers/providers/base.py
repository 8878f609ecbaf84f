"""The normalized result, error and classification every provider adapter returns."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import httpx


class Classification(StrEnum):
    """What the caller should do with a failed attempt."""

    RETRYABLE = "retryable"
    PERMANENT = "permanent"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    """Billed tokens. `input_tokens` excludes cache reads and cache writes.

    `estimated`: the call broke (or was stopped) before the upstream's own usage arrived. `output_tokens` is then
    counted from the text and thinking received, and `input_tokens` is unknown (0): the caller fills it from
    count_tokens or the intake estimate (workers/execution.py)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False


@dataclass(frozen=True, kw_only=True)
class Completion:
    """One finished upstream call, normalized to Anthropic's shapes whatever the wire format."""

    content: list[dict[str, Any]]
    text: str
    stop_reason: str | None
    usage: Usage
    raw: dict[str, Any]
    request_id: str | None
    model: str


class UpstreamError(Exception):
    """A failed upstream call, classified so the caller can decide to retry, wait or give up."""

    def __init__(
        self,
        *,
        classification: Classification,
        error_type: str,
        message: str,
        http_status: int | None = None,
        minimax_code: int | None = None,
        retry_after: float | None = None,
        usage: Usage | None = None,
        request_id: str | None = None,
        unsent: bool = False,
    ) -> None:
        super().__init__(message)
        # No connection was made, so MiniMax never saw the request: nothing billed, nothing to duplicate.
        self.unsent = unsent
        self.classification = classification
        self.http_status = http_status
        self.minimax_code = minimax_code
        self.error_type = error_type
        self.message = message
        self.retry_after = retry_after
        self.usage = usage
        self.request_id = request_id

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructor: rebuild from the fields, so the error survives pickling (Celery results).
        rebuild = functools.partial(
            UpstreamError,
            classification=self.classification,
            error_type=self.error_type,
            message=self.message,
            http_status=self.http_status,
            minimax_code=self.minimax_code,
            retry_after=self.retry_after,
            usage=self.usage,
            request_id=self.request_id,
            unsent=self.unsent,
        )
        return (rebuild, ())

    def __str__(self) -> str:
        parts = [f"{self.error_type}: {self.message}"]
        if self.http_status is not None:
            parts.append(f"http={self.http_status}")
        if self.minimax_code is not None:
            parts.append(f"code={self.minimax_code}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return (
            f"UpstreamError(classification={self.classification.value!r}, error_type={self.error_type!r}, "
            f"http_status={self.http_status!r}, minimax_code={self.minimax_code!r}, "
            f"retry_after={self.retry_after!r}, message={self.message!r})"
        )


# MiniMax codes (reference/minimax-api.md, "Errors"); a code decides before the HTTP status does.
RETRYABLE_CODES = frozenset({1000, 1001, 1013, 1024, 1033})
RATE_LIMITED_CODES = frozenset({1002, 1039, 1041, 2045, 2056})
PERMANENT_CODES = frozenset({1004, 2049, 1008, 1026, 1027, 1042, 2013, 2038})
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504, 529})


def classify(*, http_status: int | None, minimax_code: int | None) -> Classification:
    """Classify a failure: a known MiniMax code wins over the HTTP status.

    An unknown code with no decisive status (none, or a 2xx answer carrying `base_resp`) is retryable: the
    caller's attempt budget bounds the cost, while a wrong "permanent" would fail a job that could succeed.
    """
    if minimax_code is not None:
        if minimax_code in RETRYABLE_CODES:
            return Classification.RETRYABLE
        if minimax_code in RATE_LIMITED_CODES:
            return Classification.RATE_LIMITED
        if minimax_code in PERMANENT_CODES:
            return Classification.PERMANENT
    if http_status is None:
        return Classification.RETRYABLE
    if http_status == 429:
        return Classification.RATE_LIMITED
    if http_status in RETRYABLE_STATUSES or http_status >= 500:
        return Classification.RETRYABLE
    if 400 <= http_status < 500:
        return Classification.PERMANENT
    return Classification.RETRYABLE


ProgressCallback = Callable[[int], None]


class Provider(Protocol):
    """One upstream wire format. `params` is the user's request body without `model` and `stream`."""

    format: str

    def call(
        self,
        *,
        client: httpx.Client,
        base_url: str,
        api_key: str,
        model: str,
        params: Mapping[str, Any],
        stream: bool = True,
        on_progress: ProgressCallback | None = None,
    ) -> Completion: ...
