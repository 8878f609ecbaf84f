"""MiniMax error codes and the HTTP errors the real API answers with for them."""

from __future__ import annotations

from dataclasses import dataclass

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class CodeInfo:
    status: int
    message: str


# HTTP status chosen per the vendor's error-code page and what integrations observe in the wild
# (insufficient balance as 500, the 5-hour usage cap as 429).
CODES: dict[int, CodeInfo] = {
    1000: CodeInfo(500, "unknown error"),
    1001: CodeInfo(500, "request timeout"),
    1002: CodeInfo(429, "rate limit exceeded"),
    1004: CodeInfo(401, "not authorized"),
    1008: CodeInfo(500, "insufficient balance"),
    1013: CodeInfo(500, "internal service error"),
    1024: CodeInfo(500, "internal error"),
    1026: CodeInfo(400, "input content flagged as sensitive"),
    1027: CodeInfo(400, "output content flagged as sensitive"),
    1033: CodeInfo(500, "system error"),
    1039: CodeInfo(429, "token limit exceeded"),
    1041: CodeInfo(429, "connection limit exceeded"),
    1042: CodeInfo(400, "invisible character ratio limit exceeded"),
    2013: CodeInfo(400, "invalid params"),
    2038: CodeInfo(403, "real-name verification required"),
    2045: CodeInfo(429, "rate growth limit exceeded"),
    2049: CodeInfo(401, "invalid api key"),
    2056: CodeInfo(429, "usage limit exceeded"),
}


def status_message(code: int) -> str:
    info = CODES.get(code)
    return info.message if info else "unknown error"


class SimError(Exception):
    """An error answer; the app renders it in the shape of the endpoint that raised it."""

    def __init__(self, status: int, message: str, code: int) -> None:
        super().__init__(f"{message} ({code})")
        self.status = status
        self.error_type = ERROR_TYPES.get(status, "api_error")
        self.status_msg = message
        self.code = code

    @property
    def message(self) -> str:
        """The human message with the MiniMax code in brackets at the end, as the real API writes it."""
        return f"{self.status_msg} ({self.code})"

    @classmethod
    def for_code(cls, code: int) -> SimError:
        info = CODES.get(code, CodeInfo(500, "unknown error"))
        return cls(info.status, info.message, code)

    @classmethod
    def invalid(cls, detail: str) -> SimError:
        return cls(400, f"invalid params, {detail}", 2013)


class SimulatedDisconnect(Exception):
    """Raised inside a response body to make the server drop the connection mid-answer."""
