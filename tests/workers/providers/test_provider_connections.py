"""A worker keeps its connections to MiniMax open between calls: a streamed answer is read to the end of its body,
so HTTP/1.1 hands the connection back to the pool instead of closing it (each new one is a TCP and, on the real
MiniMax, a TLS handshake). An upstream that keeps the body open after the answer is whole costs at most the drain
bound (workers/providers/transport.py `drain`), never the read timeout."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx
import pytest

from tests.conformance.corpus import FIXTURES, sse_bytes
from tests.workers.providers.conftest import short_call
from workers import stopping

FORMATS = ["anthropic", "openai"]
STREAMED = {"anthropic": "anthropic_stream.json", "openai": "openai_stream_include_usage.json"}


class CountingBackend(stopping.StoppableBackend):
    def __init__(self) -> None:
        super().__init__()
        self.opened = 0

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        self.opened += 1
        return super().connect_tcp(*args, **kwargs)


@pytest.fixture
def worker_client() -> Iterator[tuple[httpx.Client, CountingBackend]]:
    """The worker's own client (workers/runtime.py): the stoppable transport, with its connects counted."""
    limits = httpx.Limits(max_connections=10, max_keepalive_connections=10)
    transport = stopping.stoppable_transport(limits=limits)
    backend = CountingBackend()
    transport._pool._network_backend = backend  # the swap stoppable_transport makes
    with httpx.Client(transport=transport, timeout=httpx.Timeout(60.0, connect=5.0)) as client:
        yield client, backend


@pytest.mark.parametrize("watched", [pytest.param(False, id="plain"), pytest.param(True, id="watched")])
@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_calls_one_after_another_share_one_connection(
    worker_client: tuple[httpx.Client, CountingBackend], base_url: str, fmt: str, watched: bool
) -> None:
    client, backend = worker_client
    for i in range(5):
        # The worker makes its calls under a stop signal (workers/execution.py); both read paths keep the connection.
        with stopping.watching(stopping.StopSignal()) if watched else _nothing():
            assert f"You said: call {i}" in short_call(client, base_url, f"call {i}", fmt=fmt)
    assert backend.opened == 1


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class HoldingServer:
    """Answers every request with a fixture's whole stream (chunked), then keeps the body open until closed: the
    answer is complete, the HTTP response never ends."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.accepted = 0
        self.release = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            lines = head.lower().split(b"\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length"))
            while len(body) < length:
                body += conn.recv(65536)
            chunk = f"{len(self.body):x}\r\n".encode() + self.body + b"\r\n"
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + chunk
            )
            self.release.wait(120)  # no terminating chunk: the body stays open

    def close(self) -> None:
        self.release.set()
        self.sock.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_upstream_that_keeps_the_stream_open_after_the_answer_costs_the_drain_bound_not_the_read_timeout(
    worker_client: tuple[httpx.Client, CountingBackend], fmt: str
) -> None:
    fixture = json.loads((FIXTURES / STREAMED[fmt]).read_text())
    server = HoldingServer(sse_bytes(fixture["response"]["events"]))
    client, backend = worker_client  # read timeout 60 s
    try:
        started = time.monotonic()
        first = short_call(client, server.url, "hello", fmt=fmt)
        second = short_call(client, server.url, "hello again", fmt=fmt)
        took = time.monotonic() - started
    finally:
        server.close()
    assert first  # the fixture's whole answer, both times
    assert first == second
    assert took < 30, f"two calls took {took:.1f} s: the read after the answer waited for the read timeout"
    # The connection left open by the upstream was closed, not reused for the second call.
    assert (backend.opened, server.accepted) == (2, 2)
