"""A call is stopped from outside its thread in every mode: while waiting for the answer to begin (a plain call),
inside a stream that has gone silent, and a stream that only ever sends pings once its deadline passes. The
upstream here is a real socket server that would otherwise never finish, so a call that returns at all was
stopped, and the server seeing the connection close is what MiniMax would see."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from workers.providers import AnthropicProvider, OpenAIProvider, UpstreamError
from workers.stopping import CANCELED, EXPIRED, TOO_LONG, Gate, StopSignal, stoppable_transport, watching

MODES = ("silent-headers", "silent-stream", "pings", "ok")
BOUND = 15.0  # a safety net so a broken build fails instead of hanging; no speed is asserted


@dataclass
class Upstream:
    seen: dict[str, threading.Event] = field(default_factory=lambda: {m: threading.Event() for m in MODES})
    closed: dict[str, threading.Event] = field(default_factory=lambda: {m: threading.Event() for m in MODES})


def _read_request(sock: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"content-length:\s*(\d+)", head, re.IGNORECASE)
    length = int(match.group(1)) if match else 0
    while len(body) < length:
        body += sock.recv(65536)
    return head.split(b" ")[1].decode().split("/")[1]


def _until_closed(sock: socket.socket) -> None:
    """Block until the client hangs up (recv returns b"" or the connection resets)."""
    sock.settimeout(None)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(payload: bytes) -> bytes:
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def _message_start() -> bytes:
    start = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
             "content": [], "usage": {"input_tokens": 0, "output_tokens": 1}}}  # fmt: skip
    return f"event: message_start\ndata: {json.dumps(start)}\n\n".encode()


def _text_delta(text: str) -> bytes:
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    return (
        f"event: content_block_start\ndata: {json.dumps(block)}\n\n"
        f"event: content_block_delta\ndata: {json.dumps(delta)}\n\n"
    ).encode()


def _answer() -> bytes:
    body = json.dumps({"id": "msg_ok", "type": "message", "role": "assistant", "model": "MiniMax-M2.7",
                       "content": [{"type": "text", "text": "fine"}], "stop_reason": "end_turn",
                       "usage": {"input_tokens": 5, "output_tokens": 1}}).encode()  # fmt: skip
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body


@pytest.fixture(params=["http", "https"])
def upstream(
    request: pytest.FixtureRequest, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> Iterator[tuple[str, Upstream]]:
    """The upstream over plain HTTP and over TLS (MiniMax is HTTPS: stopping shuts down an SSL socket there)."""
    state = Upstream()
    scheme = request.param

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            mode = _read_request(sock)
            state.seen[mode].set()
            try:
                if mode == "silent-stream":
                    sock.sendall(SSE + _chunk(_message_start()) + _chunk(_text_delta("abcdefgh")))
                elif mode == "pings":
                    sock.sendall(SSE + _chunk(_message_start()))
                    ping = _chunk(b'event: ping\ndata: {"type": "ping"}\n\n')
                    while True:  # a stream that is alive but never progresses
                        sock.sendall(ping)
                        time.sleep(0.05)  # the upstream's pace, not a synchronisation
                elif mode == "ok":
                    time.sleep(1.0)  # an answer slower than several read slices
                    sock.sendall(_answer())
            except OSError:
                pass
            _until_closed(sock)
            state.closed[mode].set()

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True

        def finish_request(self, request: Any, client_address: Any) -> None:
            if scheme == "https":
                request = tls[0].wrap_socket(request, server_side=True)
            super().finish_request(request, client_address)

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://localhost:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) TLS contexts for a self-signed certificate of `localhost`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


@pytest.fixture
def client(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> Iterator[httpx.Client]:
    limits = httpx.Limits(max_connections=10)
    transport = stoppable_transport(limits=limits, verify=tls[1])
    with httpx.Client(timeout=httpx.Timeout(300, connect=5), limits=limits, transport=transport) as c:
        yield c


def _start(
    client: httpx.Client, base_url: str, signal: StopSignal, *, fmt: str, stream: bool, gate: Gate | None = None
) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {"progress": threading.Event()}
    provider = AnthropicProvider() if fmt == "anthropic" else OpenAIProvider()

    def run() -> None:
        with gate.held() if gate is not None else contextlib.nullcontext(), watching(signal):
            try:
                outcome["result"] = provider.call(
                    client=client,
                    base_url=base_url,
                    api_key="k",
                    model="MiniMax-M2.7",
                    params={"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
                    stream=stream,
                    on_progress=lambda _tokens: outcome["progress"].set(),
                )
            except UpstreamError as error:
                outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize(
    ("mode", "stream"), [("silent-headers", False), ("silent-headers", True), ("silent-stream", True)]
)
def test_a_canceled_call_is_closed_in_every_mode(
    upstream: tuple[str, Upstream], client: httpx.Client, mode: str, stream: bool
) -> None:
    base, state = upstream
    signal = StopSignal()
    thread, outcome = _start(client, f"{base}/{mode}", signal, fmt="anthropic", stream=stream)
    assert state.seen[mode].wait(BOUND), "the request never reached the upstream"
    if mode == "silent-stream":
        assert outcome["progress"].wait(BOUND), "the first delta never arrived"

    signal.stop(CANCELED)

    thread.join(BOUND)
    assert not thread.is_alive(), "the call kept waiting after it was canceled"
    assert state.closed[mode].wait(BOUND), "the upstream never saw the connection close"
    error = outcome["error"]
    assert "stopped (canceled)" in error.message
    if mode == "silent-stream":
        # The answer had begun: the stream is reported broken with what it used so far, input left to the worker.
        assert error.error_type == "stream_broken"
        assert error.usage is not None
        assert error.usage.estimated
        assert error.usage.output_tokens == 2  # "abcdefgh" received: counted, never the placeholder


def test_a_stream_that_only_pings_stops_at_its_deadline(upstream: tuple[str, Upstream], client: httpx.Client) -> None:
    base, state = upstream
    signal = StopSignal(deadline=time.monotonic() + 0.5, deadline_reason=TOO_LONG)
    thread, outcome = _start(client, f"{base}/pings", signal, fmt="anthropic", stream=True)

    thread.join(BOUND)
    assert not thread.is_alive(), "pings kept the call alive past its deadline"
    assert state.closed["pings"].wait(BOUND)
    assert signal.reason == TOO_LONG
    assert outcome["error"].error_type == "stream_broken"


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_whose_answer_never_begins_stops_at_its_deadline(
    upstream: tuple[str, Upstream], client: httpx.Client, stream: bool
) -> None:
    """No byte ever arrives, and the read timeout is 300 s: only the deadline can end the call."""
    base, state = upstream
    signal = StopSignal(deadline=time.monotonic() + 0.5, deadline_reason=EXPIRED)
    thread, outcome = _start(client, f"{base}/silent-headers", signal, fmt="anthropic", stream=stream)

    thread.join(BOUND)
    assert not thread.is_alive(), "the call outlived its deadline"
    assert state.closed["silent-headers"].wait(BOUND), "the upstream never saw the connection close"
    assert signal.reason == EXPIRED
    assert "stopped (expired)" in outcome["error"].message


def test_a_call_waiting_on_its_upstream_lets_another_thread_through_the_gate(
    upstream: tuple[str, Upstream], client: httpx.Client
) -> None:
    """One slot: the call holds it, except while it waits for MiniMax; then another thread runs, and the call
    takes its slot back to finish (here: to handle its cancel)."""
    base, state = upstream
    gate = Gate(1)
    signal = StopSignal()
    thread, outcome = _start(client, f"{base}/silent-headers", signal, fmt="anthropic", stream=False, gate=gate)
    assert state.seen["silent-headers"].wait(BOUND), "the request never reached the upstream"
    passed = threading.Event()

    def other() -> None:
        with gate.held():
            passed.set()

    other_thread = threading.Thread(target=other, daemon=True)
    other_thread.start()
    assert passed.wait(BOUND), "a call waiting on its upstream kept its slot"
    assert thread.is_alive()  # still waiting: nothing has answered or stopped it

    signal.stop(CANCELED)
    thread.join(BOUND)
    assert not thread.is_alive()
    assert "stopped (canceled)" in outcome["error"].message
    assert gate._slots.acquire(timeout=BOUND), "the call kept its slot after it ended"


def test_a_watched_call_nobody_stops_reads_its_answer_whole(
    upstream: tuple[str, Upstream], client: httpx.Client
) -> None:
    base, _ = upstream
    signal = StopSignal(deadline=time.monotonic() + 60)
    thread, outcome = _start(client, f"{base}/ok", signal, fmt="anthropic", stream=False)
    thread.join(BOUND)
    assert "error" not in outcome, outcome
    assert outcome["result"].text == "fine"
    assert signal.reason is None


def test_the_stoppable_backend_is_in_place() -> None:
    """stoppable_transport swaps httpcore's backend through a private attribute: fail loudly if it moves."""
    from workers.stopping import StoppableBackend

    transport = stoppable_transport(limits=httpx.Limits())
    assert isinstance(transport._pool._network_backend, StoppableBackend)
