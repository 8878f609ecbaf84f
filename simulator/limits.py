"""The simulator's own rate limiter, its billing ledger and its request counters.

Everything here runs on the server's single event loop, so plain containers need no locks.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

WINDOW_SECONDS = 60.0

Verdict = Literal["ok", "rpm", "tpm"]


@dataclass
class _Window:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0

    def prune(self, now: float) -> None:
        horizon = now - WINDOW_SECONDS
        while self.requests and self.requests[0] <= horizon:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= horizon:
            self.token_sum -= self.tokens.popleft()[1]


class RateLimiter:
    """RPM and TPM per (api key, model) over a sliding 60-second log of timestamps."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], _Window] = {}

    def admit(self, *, api_key: str, model: str, input_tokens: int, rpm: int | None, tpm: int | None) -> Verdict:
        """Count the request and its input tokens if both limits allow it; otherwise count nothing."""
        now = time.monotonic()
        window = self._windows.setdefault((api_key, model), _Window())
        window.prune(now)
        if rpm is not None and len(window.requests) >= rpm:
            return "rpm"
        if tpm is not None and window.token_sum + input_tokens > tpm:
            return "tpm"
        window.requests.append(now)
        window.tokens.append((now, input_tokens))
        window.token_sum += input_tokens
        return "ok"

    def add_output(self, *, api_key: str, model: str, output_tokens: int) -> None:
        now = time.monotonic()
        window = self._windows.setdefault((api_key, model), _Window())
        window.tokens.append((now, output_tokens))
        window.token_sum += output_tokens

    def usage(self) -> list[dict[str, Any]]:
        """Requests and tokens in the current window, per (key suffix, model)."""
        now = time.monotonic()
        rows = []
        for (api_key, model), window in self._windows.items():
            window.prune(now)
            if window.requests or window.token_sum:
                rows.append(
                    {
                        "api_key_suffix": key_suffix(api_key),
                        "model": model,
                        "requests": len(window.requests),
                        "tokens": window.token_sum,
                    }
                )
        return rows

    def reset(self) -> None:
        self._windows.clear()


def key_suffix(api_key: str) -> str:
    """The last four characters: enough to tell keys apart in reports without exposing them."""
    return api_key[-4:]


# client_disconnected: the client closed the connection before the answer was whole (a cancel, a timeout). The
# prompt was processed and tokens were generated up to that moment, so those are billed, as hosted models do.
Outcome = Literal["succeeded", "midstream_error", "client_disconnected"]


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    request_id: str
    format: Literal["anthropic", "openai"]
    model: str
    api_key_suffix: str
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    outcome: Outcome
    at: str


_TOTAL_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


class Ledger:
    """Every call the simulator billed, in the order it billed them."""

    def __init__(self) -> None:
        self._entries: list[LedgerEntry] = []

    def record(
        self,
        *,
        request_id: str,
        format: Literal["anthropic", "openai"],
        model: str,
        api_key: str,
        input_tokens: int,
        output_tokens: int,
        outcome: Outcome,
    ) -> LedgerEntry:
        entry = LedgerEntry(
            request_id=request_id,
            format=format,
            model=model,
            api_key_suffix=key_suffix(api_key),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            # The simulator has no prompt cache; the fields exist so reports keep the real API's shape.
            cache_read_input_tokens=0,
            cache_creation_input_tokens=0,
            outcome=outcome,
            at=datetime.now(UTC).isoformat(),
        )
        self._entries.append(entry)
        return entry

    def snapshot(self) -> dict[str, Any]:
        entries = [asdict(entry) for entry in self._entries]
        totals: dict[str, Any] = {name: sum(entry[name] for entry in entries) for name in _TOTAL_FIELDS}
        totals["calls"] = len(entries)
        totals["by_outcome"] = dict(Counter(entry["outcome"] for entry in entries))
        return {"entries": entries, "totals": totals}

    def reset(self) -> None:
        self._entries.clear()


class Stats:
    """Request counters. Each API request is counted on arrival and given exactly one outcome at its end."""

    def __init__(self) -> None:
        self.requests_total = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.by_outcome: Counter[str] = Counter()

    def enter(self) -> None:
        self.requests_total += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    def outcome(self, name: str) -> None:
        self.by_outcome[name] += 1

    def snapshot(self, window: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "by_outcome": dict(self.by_outcome),
            "rate_limited": self.by_outcome["http_429"],
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "window": {
                "seconds": WINDOW_SECONDS,
                "rpm_used": sum(row["requests"] for row in window),
                "tpm_used": sum(row["tokens"] for row in window),
                "by_key_model": window,
            },
        }

    def reset(self) -> None:
        # in_flight is a live gauge of open connections, so a reset must not zero it.
        self.requests_total = 0
        self.peak_in_flight = self.in_flight
        self.by_outcome.clear()
