"""A request whose transaction hit a deadlock or serialization failure is run again, whole, before anything was
sent: the client never sees one (issue 13 point 2; the lock order is in service/db.py).

Only the whole request can be retried: Postgres rolled its transaction back as a unit, and the route's session
commits once, at the end (service/api/deps.py). A request body up to REPLAY_BYTES is kept to be replayed; a larger
one (an upload) is not, and its conflict is answered as before.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db import CONFLICT_ATTEMPTS, conflict_backoff, is_conflict

log = logging.getLogger("mmjobs.api")
REPLAY_BYTES = 1 << 20


class _Replay:
    """The request's receive channel, recorded so a retry reads the same body again."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.recorded: list[Message] = []
        self.size = 0
        self.replayable = True
        self.position = 0

    def rewind(self) -> None:
        self.position = 0

    async def __call__(self) -> Message:
        if self.position < len(self.recorded):
            message = self.recorded[self.position]
            self.position += 1
            return message
        message = await self.receive()
        if message["type"] == "http.request" and self.replayable:
            self.size += len(message.get("body", b""))
            if self.size > REPLAY_BYTES:
                self.replayable = False
                self.recorded.clear()
            else:
                self.recorded.append(message)
                self.position += 1
        return message


class RetryConflicts:
    """ASGI middleware, innermost of ours: just outside the routes, where an unhandled database error surfaces."""

    def __init__(self, app: ASGIApp, attempts: int = CONFLICT_ATTEMPTS) -> None:
        self.app = app
        self.attempts = attempts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replay = _Replay(receive)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        for attempt in range(self.attempts):
            try:
                await self.app(scope, replay, tracking_send)
                return
            except Exception as exc:
                if not _retryable(exc) or started or not replay.replayable or attempt == self.attempts - 1:
                    raise
                log.warning(
                    "%s %s hit a database conflict (%s); running the request again (%d of %d)",
                    scope.get("method"), scope.get("path"), type(exc).__name__, attempt + 2, self.attempts,
                )  # fmt: skip
                await anyio.sleep(conflict_backoff(attempt))
                replay.rewind()


def _retryable(exc: BaseException) -> bool:
    # FastAPI may wrap what a dependency raised while closing (the commit) in an exception group.
    if isinstance(exc, BaseExceptionGroup):
        return all(_retryable(inner) for inner in exc.exceptions)
    seen: set[int] = set()
    current: Any = exc
    while current is not None and id(current) not in seen:
        if is_conflict(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
