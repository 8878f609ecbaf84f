"""Stopping an upstream call from outside the thread that makes it: the job was canceled, its lease was lost, or
it ran past its deadline (`expires_at`, or MMJOBS_MAX_CALL_SECONDS).

httpx's sync client blocks its thread in `recv` with no way in from another thread: closing the response from
outside does not wake a thread waiting for headers (a non-streamed call, or a request MiniMax has not begun to
answer), and on Linux closing a socket another thread reads does not interrupt that read either. So the reads of
a watched call wait in short slices (`POLL_SECONDS`) and look at the call's `StopSignal` between them: within a
slice of the stop, the read raises, httpcore closes the connection (an unfinished response is never returned to
the pool), and MiniMax sees the client hang up. The same check ends a stream that only ever sends pings once
its deadline has passed, since every read, even one that returns data, checks first.

Calls are watched per thread (`watching`), so uploads and other requests on the same client are unaffected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2

CANCELED = "canceled"
LEASE_LOST = "lease_lost"
EXPIRED = "expired"
TOO_LONG = "max_call_seconds"


class StopSignal:
    """Why (if at all) a call must stop. `stop` may be called from any thread; the first reason given wins."""

    def __init__(self, *, deadline: float | None = None, deadline_reason: str = TOO_LONG) -> None:
        self._event = threading.Event()
        self._reason: str | None = None
        self._lock = threading.Lock()
        self.deadline = deadline  # time.monotonic() value
        self.deadline_reason = deadline_reason

    def stop(self, reason: str) -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason
        self._event.set()

    @property
    def reason(self) -> str | None:
        """The reason the call must stop now, or None to go on. Passing the deadline stops the call."""
        if self._reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.stop(self.deadline_reason)
        return self._reason

    def is_set(self) -> bool:
        return self.reason is not None


_local = threading.local()


@contextmanager
def watching(signal: StopSignal) -> Iterator[StopSignal]:
    """Reads this thread makes inside the block stop within `POLL_SECONDS` of `signal` stopping."""
    previous = getattr(_local, "signal", None)
    _local.signal = signal
    try:
        yield signal
    finally:
        _local.signal = previous


def _current() -> StopSignal | None:
    signal: StopSignal | None = getattr(_local, "signal", None)
    return signal


def _check() -> None:
    signal = _current()
    if signal is not None and (reason := signal.reason) is not None:
        raise httpcore.ReadError(f"the call was stopped ({reason})")


class _StoppableStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if _current() is None:
            return self._inner.read(max_bytes, timeout)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            _check()
            left = POLL_SECONDS if end is None else min(POLL_SECONDS, end - time.monotonic())
            if left <= 0:
                raise httpcore.ReadTimeout("timed out")
            try:
                # A timed-out recv read nothing, so the next slice resumes exactly where this one left off.
                return self._inner.read(max_bytes, left)
            except httpcore.ReadTimeout:
                if end is not None and time.monotonic() >= end:
                    raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        _check()
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _StoppableStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class StoppableBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, with streams whose reads honour the calling thread's `StopSignal`."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _StoppableStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _StoppableStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def stoppable_transport(*, limits: httpx.Limits) -> httpx.HTTPTransport:
    """An httpx transport whose connections honour `watching`. httpx does not take a network backend, so the
    one its connection pool was built with is swapped (httpcore's pool reads it only when it opens a connection);
    tests/workers/test_stopping.py fails if an httpx upgrade moves it."""
    transport = httpx.HTTPTransport(limits=limits)
    pool = getattr(transport, "_pool", None)
    if isinstance(pool, httpcore.ConnectionPool) and hasattr(pool, "_network_backend"):
        pool._network_backend = StoppableBackend()
    else:  # pragma: no cover - only if httpx/httpcore change their insides
        log.warning("httpx transport without a swappable backend: canceled calls run until their next event")
    return transport
