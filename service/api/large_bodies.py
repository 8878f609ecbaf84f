"""At most `MMJOBS_MAX_CONCURRENT_LARGE_BODIES` large request bodies in one API process at once (issue 14.2).

Intake reads batches a request at a time, but each large body still costs a spooled temporary file, a parse and a
long transaction, and a body that other routes read whole (a 60 MB `/v1/jobs`) costs memory several times its
size. A body is large when it declares a Content-Length over `MMJOBS_LARGE_BODY_BYTES`, or, sent chunked without
one, once that many bytes have arrived. Beyond the cap the request gets 503 with Retry-After at once: before it is
read when its length is declared, else as soon as it turns out large (before any response has started).
"""

from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_body

RETRY_AFTER_SECONDS = 5


class TooManyLargeBodies(HTTPException):
    """An HTTPException, so a route or FastAPI's body parsing that meets it mid-read answers 503 with
    Retry-After rather than a generic 400 or 500."""

    def __init__(self, limit: int) -> None:
        message = f"this API process is already reading {limit} large request bodies; retry in {RETRY_AFTER_SECONDS} s"
        super().__init__(503, message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


class LargeBodyLimit:
    def __init__(self, app: ASGIApp, *, limit: int, large_bytes: int) -> None:
        self.app = app
        self.limit = limit
        self.large_bytes = large_bytes
        self.in_flight = 0  # one event loop per process: plain counting is atomic between awaits

    def _take(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        held = False
        if declared is not None and declared.isdigit() and int(declared) > self.large_bytes:
            if not self._take():
                await _refuse(send, self.limit)
                return
            held = True
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, held
            message = await receive()
            if message["type"] == "http.request" and not held:
                seen += len(message.get("body", b""))
                if seen > self.large_bytes:
                    if not self._take():
                        raise TooManyLargeBodies(self.limit)
                    held = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except TooManyLargeBodies:
            if started:
                raise
            await _refuse(send, self.limit)
        finally:
            if held:
                self.in_flight -= 1


async def _refuse(send: Send, limit: int) -> None:
    error = TooManyLargeBodies(limit)
    body = json.dumps(error_body("overloaded", str(error.detail))).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
