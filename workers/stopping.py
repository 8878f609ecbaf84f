"""Stopping an upstream call from outside the thread that makes it: the job was canceled, its lease was lost, or
it ran past its deadline (`expires_at`, or MMJOBS_MAX_CALL_SECONDS).

httpx's sync client blocks its thread in `recv` with no way in from another thread: closing the response from
outside does not wake a thread waiting for headers (a non-streamed call, or a request MiniMax has not begun to
answer), and on Linux `close()` on a socket another thread reads does not interrupt that read either. But
`shutdown(SHUT_RDWR)` does: the blocked `poll`/`recv` returns at once. So a watched read registers its socket
with the call's `StopSignal` for as long as it waits, and `StopSignal.stop` (any thread) shuts that socket down;
the read then raises, httpcore closes the connection (an unfinished response is never returned to the pool), and
MiniMax sees the client hang up. A read never waits past the signal's deadline either: its timeout is cut to the
deadline, so a call that outlives `expires_at` or MMJOBS_MAX_CALL_SECONDS stops on time without any polling, and
every read, even one that returns data (a stream of pings), checks the signal first.

Nothing wakes up while a call waits: 10,000 calls in flight cost no CPU between their events (the previous
design read in 0.2 s slices, 5 wakeups per call per second).

Calls are watched per thread (`watching`), so uploads and other requests on the same client are unaffected.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

log = logging.getLogger(__name__)

CANCELED = "canceled"
LEASE_LOST = "lease_lost"
EXPIRED = "expired"
TOO_LONG = "max_call_seconds"


def _shutdown(sock: socket.socket) -> None:
    """Wake whichever thread reads `sock`. The C-level call on the descriptor, also for a TLS socket, whose own
    `shutdown` would drop its SSL object under the reading thread's feet."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError):  # already closed or reset: nothing waits on it
        pass


class StopSignal:
    """Why (if at all) a call must stop. `stop` may be called from any thread; the first reason given wins."""

    def __init__(self, *, deadline: float | None = None, deadline_reason: str = TOO_LONG) -> None:
        self._reason: str | None = None
        self._lock = threading.Lock()
        self._waiting: set[socket.socket] = set()  # sockets a read of this call is blocked on right now
        self.deadline = deadline  # time.monotonic() value
        self.deadline_reason = deadline_reason

    def stop(self, reason: str) -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason
            waiting = list(self._waiting)
            for sock in waiting:
                _shutdown(sock)

    @property
    def reason(self) -> str | None:
        """The reason the call must stop now, or None to go on. Passing the deadline stops the call."""
        if self._reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.stop(self.deadline_reason)
        return self._reason

    def is_set(self) -> bool:
        return self.reason is not None

    @contextmanager
    def waiting_on(self, sock: socket.socket | None) -> Iterator[None]:
        """While inside, `stop` shuts `sock` down (waking a read blocked on it). Registered under the lock, so a
        stop either sees the socket or happened before: the caller checks `reason` after entering."""
        if sock is None:
            yield
            return
        with self._lock:
            self._waiting.add(sock)
        try:
            yield
        finally:
            with self._lock:
                self._waiting.discard(sock)


_local = threading.local()


class Gate:
    """At most `size` call threads of a process run at a time; a thread waiting for its upstream lets another in.

    A worker process runs thousands of calls, each in its own thread (one per Celery pool slot). While they wait
    on MiniMax they cost nothing, but in a burst (a wave of claims, or thousands of answers arriving in the same
    second) they would all be runnable at once: each holds the GIL for a few microseconds and then queues for it
    again behind thousands of others, and any lock taken meanwhile (the database pool's, a logging handler's) is
    held across those waits, so the whole process crawls (measured: 2,500 threads, 860 waiting on the pool, 510
    on a log handler, leases lapsing). Through the gate the burst runs `size` at a time, the rest asleep."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots = threading.Semaphore(size)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Run the block holding a slot, except while a watched read waits for the upstream (see `read`)."""
        self._slots.acquire()
        previous = getattr(_local, "gate", None)
        _local.gate = self
        try:
            yield
        finally:
            _local.gate = previous
            self._slots.release()

    @contextmanager
    def _open(self) -> Iterator[None]:
        self._slots.release()
        try:
            yield
        finally:
            self._slots.acquire()


@contextmanager
def outside_the_gate() -> Iterator[None]:
    """Give this thread's gate slot (if it holds one) to another thread for the block: for waits that are not
    upstream reads (waiting for another worker's upload), which must not keep the slot while asleep."""
    gate: Gate | None = getattr(_local, "gate", None)
    if gate is None:
        yield
        return
    with gate._open():
        yield


@contextmanager
def watching(signal: StopSignal) -> Iterator[StopSignal]:
    """Reads this thread makes inside the block stop as soon as `signal` stops (or its deadline passes)."""
    previous = getattr(_local, "signal", None)
    _local.signal = signal
    try:
        yield signal
    finally:
        _local.signal = previous


@contextmanager
def reads_within(seconds: float) -> Iterator[None]:
    """Reads this thread makes inside the block give up (httpcore.ReadTimeout) once `seconds` have passed, whatever
    the client's read timeout: for reading the end of an answer that is already whole (`transport.drain`)."""
    previous = getattr(_local, "read_until", None)
    _local.read_until = time.monotonic() + seconds
    try:
        yield
    finally:
        _local.read_until = previous


def _current() -> StopSignal | None:
    signal: StopSignal | None = getattr(_local, "signal", None)
    return signal


def _stopped(reason: str) -> httpcore.ReadError:
    return httpcore.ReadError(f"the call was stopped ({reason})")


def _check() -> None:
    signal = _current()
    if signal is not None and (reason := signal.reason) is not None:
        raise _stopped(reason)


class _StoppableStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        sock = inner.get_extra_info("socket")
        self._socket: socket.socket | None = sock if isinstance(sock, socket.socket) else None

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        until: float | None = getattr(_local, "read_until", None)
        if until is not None:  # `reads_within`: the timeout is cut to what is left of the bound
            bound = until - time.monotonic()
            if bound <= 0:
                raise httpcore.ReadTimeout("the bound on this read passed")
            timeout = bound if timeout is None else min(timeout, bound)
        signal = _current()
        if signal is None:
            return self._inner.read(max_bytes, timeout)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            _check()
            now = time.monotonic()
            ends = [t for t in (end, signal.deadline) if t is not None]
            left = min(ends) - now if ends else None
            if end is not None and end - now <= 0:
                raise httpcore.ReadTimeout("timed out")
            with outside_the_gate(), signal.waiting_on(self._socket):
                try:
                    _check()  # stopped before the socket was registered: nobody will shut it down
                    data = self._inner.read(max_bytes, None if left is None else max(left, 0.001))
                except httpcore.ReadTimeout:
                    # Cut short by the deadline: the next pass raises the stop; a real timeout raises here.
                    if end is not None and time.monotonic() >= end:
                        raise
                    continue
                except Exception as exc:
                    if (reason := signal.reason) is not None:
                        raise _stopped(reason) from exc
                    raise
            if (reason := signal.reason) is not None:
                raise _stopped(reason)  # woken by the shutdown (b''), or data that came with the stop
            return data

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


def stoppable_transport(*, limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> httpx.HTTPTransport:
    """An httpx transport whose connections honour `watching`. httpx does not take a network backend, so the
    one its connection pool was built with is swapped (httpcore's pool reads it only when it opens a connection);
    tests/workers/test_stopping.py fails if an httpx upgrade moves it."""
    transport = httpx.HTTPTransport(limits=limits, verify=verify)
    pool = getattr(transport, "_pool", None)
    if isinstance(pool, httpcore.ConnectionPool) and hasattr(pool, "_network_backend"):
        pool._network_backend = StoppableBackend()
    else:  # pragma: no cover - only if httpx/httpcore change their insides
        log.warning("httpx transport without a swappable backend: canceled calls run until their next event")
    return transport
