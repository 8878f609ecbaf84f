"""One log line per API request: method, path, status, duration and tenant.

The tenant is whatever authentication left in the request state (`request.state.tenant`); a request that never
authenticated (health checks, 401s) logs none. Pure ASGI rather than `BaseHTTPMiddleware`: it adds no task per
request and does not buffer streamed responses.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.observability.logging import get_logger

log = get_logger("mmjobs.api.access")
# Probes and scrapes every few seconds would drown the lines that matter; they log at DEBUG.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class RequestLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Request.state writes into this dict, so what a dependency records there is visible here afterwards.
        state: dict[str, Any] = scope.setdefault("state", {})
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            path = str(scope.get("path", ""))
            method = log.debug if path in QUIET_PATHS and status < 500 else log.info
            method(
                "request",
                method=scope.get("method"),
                path=path,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
                tenant=state.get("tenant"),
                client=(scope.get("client") or (None,))[0],
            )
