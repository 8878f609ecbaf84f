"""``SimulatorControl``: a small client for a running simulator's ``/_sim`` endpoints (tests, benchmarks)."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import httpx


class SimulatorControl:
    """Changes a running simulator's config, resets it, and reads its ledger and stats."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def configure(self, **changes: Any) -> dict[str, Any]:
        """``POST /_sim/config``: e.g. ``configure(faults="429=0.2", latency="0.1-0.3", rpm=None)``."""
        return self._json(self._http.post("/_sim/config", json=changes))

    def reset(self) -> None:
        """``POST /_sim/reset``: clear the ledger, the counters and the rate-limit windows."""
        self._json(self._http.post("/_sim/reset"))

    def ledger(self) -> dict[str, Any]:
        return self._json(self._http.get("/_sim/ledger"))

    def stats(self) -> dict[str, Any]:
        return self._json(self._http.get("/_sim/stats"))

    def entry(self, request_id: str) -> dict[str, Any] | None:
        """The ledger entry billed for the response with this ``id``, if any."""
        for entry in self.ledger()["entries"]:
            if entry["request_id"] == request_id:
                found: dict[str, Any] = entry
                return found
        return None
