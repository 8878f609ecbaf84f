"""classify(): the reference table, code by code and status by status."""

from __future__ import annotations

import pytest

from workers.providers import Classification, classify

R, P, L = Classification.RETRYABLE, Classification.PERMANENT, Classification.RATE_LIMITED

CODES = {
    1000: R, 1001: R, 1013: R, 1024: R, 1033: R,
    1002: L, 1039: L, 1041: L, 2045: L, 2056: L,
    1004: P, 2049: P, 1008: P, 1026: P, 1027: P, 1042: P, 2013: P, 2038: P,
}  # fmt: skip
STATUSES = {
    429: L,
    500: R, 502: R, 503: R, 504: R, 529: R,
    400: P, 401: P, 402: P, 403: P, 404: P, 413: P, 422: P,
    405: P, 409: P, 418: P, 451: P,  # other 4xx
    501: R, 505: R, 520: R, 599: R,  # other 5xx
}  # fmt: skip


@pytest.mark.parametrize(("code", "expected"), CODES.items())
def test_every_minimax_code(code: int, expected: Classification) -> None:
    assert classify(http_status=None, minimax_code=code) is expected
    assert classify(http_status=200, minimax_code=code) is expected  # base_resp inside an HTTP 200


@pytest.mark.parametrize(("status", "expected"), STATUSES.items())
def test_every_http_status(status: int, expected: Classification) -> None:
    assert classify(http_status=status, minimax_code=None) is expected


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (500, 1008, P),  # insufficient balance observed as HTTP 500: never retry
        (402, 1008, P),
        (429, 2056, L),  # 5-hour usage cap
        (400, 1039, L),  # token limit reported with a client-error status still waits and retries
        (400, 1000, R),
        (429, 2013, P),
        (503, 2049, P),
    ],
)
def test_minimax_code_wins_over_http_status(status: int, code: int, expected: Classification) -> None:
    assert classify(http_status=status, minimax_code=code) is expected


def test_unknown_code_falls_back_to_status() -> None:
    assert classify(http_status=400, minimax_code=9999) is P
    assert classify(http_status=503, minimax_code=9999) is R
    assert classify(http_status=429, minimax_code=9999) is L


def test_nothing_known_is_retryable() -> None:
    assert classify(http_status=None, minimax_code=None) is R
    assert classify(http_status=200, minimax_code=9999) is R
