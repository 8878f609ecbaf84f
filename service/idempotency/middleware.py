"""`Idempotency-Key` on every POST, as ASGI middleware (Stripe's semantics; IETF draft-ietf-httpapi-idempotency-key).

The first response to a key (status, headers, body) is stored per tenant for 24 hours and replayed with
`Idempotent-Replayed: true`; the same key with another method, path, query or body answers 422
`idempotency_key_reused`; while the first request is still running, 409. Responses that ask to be retried
(5xx, 402, 408, 409, 425, 429) are not stored: the claim is released and a retry runs again.

A response that shows a secret (a webhook signing secret: the route marks it `Cache-Control: no-store`, see
`shows_secret`) is never stored: the key keeps only that its request ran and how it ended, and a replay answers
409 `idempotency_key_unreplayable` rather than run it again (a second endpoint, another rotation) or show the
secret a second time (it is shown once).

The body is buffered up to `buffer_bytes` to fingerprint it before the request runs; a larger (streamed)
body is fingerprinted as it passes through to the route, and its response is stored with that fingerprint.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import anyio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_body
from service.db import utcnow
from service.idempotency import store
from service.idempotency.fingerprint import Fingerprint

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
NOT_STORED = frozenset({402, 408, 409, 425, 429})
# Headers of the first response that a replay does not repeat (the server sets its own).
_SKIPPED_HEADERS = frozenset({"content-length", "date", "server", "connection", "transfer-encoding"})
PURGE_EVERY = 60.0
log = logging.getLogger("mmjobs.idempotency")
# The clock: tests replace it to see a key expire.
clock: Callable[[], datetime] = utcnow


class _Body:
    """The request body: a buffered prefix replayed to the route, then the rest as it comes, all hashed."""

    def __init__(self, receive: Receive, fingerprint: Fingerprint) -> None:
        self._receive = receive
        self.fingerprint = fingerprint
        self.buffered: deque[Message] = deque()
        self.size = 0
        self.complete = False

    def _take(self, message: Message) -> None:
        chunk = message.get("body", b"")
        self.size += len(chunk)
        self.fingerprint.update(chunk)
        self.complete = not message.get("more_body", False)

    async def read_prefix(self, limit: int) -> None:
        while not self.complete and self.size <= limit:
            message = await self._receive()
            self.buffered.append(message)
            if message["type"] != "http.request":
                return
            self._take(message)

    async def drain(self) -> None:
        """Read (and hash) the rest without keeping it."""
        while not self.complete:
            message = await self._receive()
            if message["type"] != "http.request":
                return
            self._take(message)

    async def receive(self) -> Message:
        if self.buffered:
            return self.buffered.popleft()
        message = await self._receive()
        if message["type"] == "http.request":
            self._take(message)
        return message


def _secret(headers: Headers) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key") or None


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, type: str, message: str, **headers: str) -> None:
    body = json.dumps(error_body(type, message, HEADER)).encode()
    extra = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    await _answer(send, status, body, [(b"content-type", b"application/json"), *extra])


async def _shielded(call: Callable[[], Awaitable[None]]) -> None:
    """Bookkeeping that must happen even while the request is being cancelled."""
    with anyio.CancelScope(shield=True):
        try:
            await call()
        except Exception:
            log.exception("idempotency bookkeeping failed")


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, *, buffer_bytes: int = 1024 * 1024, max_response_bytes: int = 8 << 20) -> None:
        self.app = app
        self.buffer_bytes = buffer_bytes
        self.max_response_bytes = max_response_bytes
        self._last_purge = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        key = headers.get(HEADER)
        secret = _secret(headers)
        if key is None or secret is None:  # no key; or no API key, which the route answers with 401
            await self.app(scope, receive, send)
            return
        if not 1 <= len(key) <= MAX_KEY_LENGTH:
            message = f"{HEADER}: give 1 to {MAX_KEY_LENGTH} characters (got {len(key)})"
            await _error(send, 422, "invalid_request", message)
            return
        state = scope["app"].state
        factory, settings = state.session_factory, state.settings
        path = scope["path"]
        fingerprint = Fingerprint(
            method="POST", path=path, query=scope.get("query_string", b""), content_type=headers.get("content-type")
        )
        body = _Body(receive, fingerprint)
        await body.read_prefix(self.buffer_bytes)
        now = clock()
        opened = await anyio.to_thread.run_sync(
            lambda: store.open_key(
                factory,
                secret=secret,
                key=key,
                path=path,
                fingerprint=fingerprint.hexdigest() if body.complete else None,
                now=now,
                lock_seconds=settings.idempotency_lock_seconds,
            )
        )
        if opened is None:
            await self.app(scope, body.receive, send)
        elif isinstance(opened, store.Stored):
            await self._replay(opened, body, send)
        else:
            await self._first(scope, body, send, opened, factory, settings.idempotency_lock_seconds)
        await self._purge(factory, now)

    async def _replay(self, stored: store.Stored, body: _Body, send: Send) -> None:
        if stored.status_code is None:
            message = "the first request with this key is still being processed; retry once it has finished"
            await _error(send, 409, "idempotency_key_in_use", message, retry_after="1")
            return
        await body.drain()
        if not body.complete or stored.fingerprint != body.fingerprint.hexdigest():
            message = (
                f"{HEADER}: this key was used with a different request (method, path, query or body) in the last "
                "24 hours; send a new key for a new request"
            )
            await _error(send, 422, "idempotency_key_reused", message)
            return
        if not stored.replayable:
            message = (
                f"the first request with this key was answered {stored.status_code}, with a secret that is shown "
                "only once and never kept, so it cannot be replayed; it was not run again. Read the resource "
                "with GET (the secret stays hidden), or rotate the secret to be shown a new one"
            )
            await _error(send, 409, "idempotency_key_unreplayable", message)
            return
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored.headers]
        await _answer(send, stored.status_code, stored.body, [*headers, (REPLAYED.lower().encode(), b"true")])

    async def _first(
        self, scope: Scope, body: _Body, send: Send, claim: store.Claim, factory: Any, lock_seconds: float
    ) -> None:
        """Run the request holding the claim; store its response before the client has all of it, so a retry
        that follows the answer always finds it."""
        status = 0
        response_headers: list[list[str]] = []
        chunks: list[bytes] = []
        size = 0
        settled = False
        secret = False  # the response says Cache-Control: no-store: it shows a secret

        async def settle() -> None:
            kept = secret or size <= self.max_response_bytes  # a secret's response is kept without its body
            storable = status < 500 and status not in NOT_STORED and body.complete and kept
            if storable:
                content = b"".join(chunks)
                await anyio.to_thread.run_sync(
                    lambda: store.complete(
                        factory, claim, fingerprint=body.fingerprint.hexdigest(), status_code=status,
                        headers=response_headers, body=content, now=clock(), replayable=not secret,
                    )
                )  # fmt: skip
            else:
                await anyio.to_thread.run_sync(store.release, factory, claim)

        async def capture(message: Message) -> None:
            nonlocal status, size, settled, secret
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", []):
                    lower = name.decode("latin-1").lower()
                    if lower == "cache-control" and "no-store" in value.decode("latin-1").lower():
                        secret = True
                    if lower not in _SKIPPED_HEADERS:
                        response_headers.append([name.decode("latin-1"), value.decode("latin-1")])
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                size += len(chunk)
                if size <= self.max_response_bytes and not secret:
                    chunks.append(chunk)
                if not message.get("more_body", False) and not settled:
                    settled = True
                    await _shielded(settle)
            await send(message)

        async def renew() -> None:
            while True:
                await anyio.sleep(lock_seconds / 3)
                until = clock() + timedelta(seconds=lock_seconds)
                try:
                    await anyio.to_thread.run_sync(partial(store.renew, factory, claim, until=until))
                except Exception:
                    log.warning("could not renew idempotency key %r; it lapses in %ss", claim.key, lock_seconds)

        try:
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(renew)
                    try:
                        await self.app(scope, body.receive, capture)
                    finally:
                        group.cancel_scope.cancel()
            except BaseExceptionGroup as wrapped:  # the task group wraps what the request raised: unwrap it
                if len(wrapped.exceptions) == 1:
                    raise wrapped.exceptions[0] from None
                raise
        finally:
            if not settled:
                settled = True
                await _shielded(lambda: anyio.to_thread.run_sync(store.release, factory, claim))

    async def _purge(self, factory: Any, now: datetime) -> None:
        """Expired keys go now and then (a key reused after expiry is also replaced on the spot)."""
        if time.monotonic() - self._last_purge < PURGE_EVERY:
            return
        self._last_purge = time.monotonic()
        try:
            await anyio.to_thread.run_sync(lambda: store.purge(factory, now=now))
        except Exception:
            log.warning("could not purge expired idempotency keys", exc_info=True)
