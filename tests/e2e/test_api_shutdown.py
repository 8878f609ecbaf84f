"""SIGTERM on the API (`mmjobs api`: uvicorn with timeout_graceful_shutdown) drains the requests in flight.

The request in flight is a batch upload whose client streams its JSONL body slowly, and holds the rest of it until
the server is shutting down: the server cannot answer before the last line arrives, so the request is in flight
when the signal lands whatever the machine's speed. The API runs as a real process against a database of its own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from service.db import make_engine, make_session_factory, transaction
from service.tenants import service as tenants
from tests.db import drop_database, fresh_database
from tests.e2e.conftest import E2E_REDIS_URL
from tests.procs import Proc, free_port, wait_http, wait_until

pytestmark = pytest.mark.e2e

DATABASE = f"mmjobs_e2e_shutdown_{os.getpid()}"
LINES = 60
HELD_AFTER = 20  # lines sent before the client holds the rest of the body until the server is shutting down
# timeout_graceful_shutdown is 30 s; the drain itself takes about a second here.
EXIT_TIMEOUT = 60


@pytest.fixture(scope="module")
def database() -> Iterator[tuple[str, str]]:
    """(SQLAlchemy URL of a fresh migrated database, an API key in it)."""
    url = fresh_database(DATABASE)
    engine = make_engine(url)
    try:
        with transaction(make_session_factory(engine)) as session:
            key = tenants.create_key(session, tenant_name="shutdown").secret
        yield url, key
    finally:
        engine.dispose()
        drop_database(DATABASE)


def start_api(database_url: str, log_dir: Path, workers: int) -> tuple[Proc, int]:
    port = free_port()
    env = {"MMJOBS_DATABASE_URL": database_url, "MMJOBS_REDIS_URL": E2E_REDIS_URL, "MMJOBS_LOG_LEVEL": "INFO"}
    argv = ["-m", "service.cli", "api", "--port", str(port), "--workers", str(workers)]
    proc = Proc(f"api-{workers}", argv, env, log_dir)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=60)
    return proc, port


def line(i: int) -> bytes:
    body = {"custom_id": f"r-{i}", "model": "MiniMax-M2.7",
            "params": {"max_tokens": 16, "messages": [{"role": "user", "content": f"line {i}"}]}}  # fmt: skip
    return json.dumps(body).encode() + b"\n"


def connect_and_ask(port: int) -> socket.socket | None:
    """A new client: connects and sends a request; None if the connection is refused."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=EXIT_TIMEOUT)
    except ConnectionRefusedError:
        return None
    sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
    return sock


def unread_by_server(port: int) -> int | None:
    """Bytes the server has not read yet on its one established connection on `port` (Linux: /proc/net/tcp);
    None while there is no such connection."""
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
            return int(fields[4].split(":")[1], 16)
    return None


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends on `sock` until it closes or resets it."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return received


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-processes"])
def test_sigterm_drains_a_slow_upload_in_flight(workers: int, database: tuple[str, str], tmp_path: Path) -> None:
    database_url, key = database
    api, port = start_api(database_url, tmp_path, workers)
    base = f"http://127.0.0.1:{port}"
    halfway, shutting_down = threading.Event(), threading.Event()
    outcome: dict[str, httpx.Response | Exception] = {}

    def body() -> Iterator[bytes]:
        for i in range(LINES):
            yield line(i)
            if i + 1 == HELD_AFTER:
                halfway.set()
                shutting_down.wait(EXIT_TIMEOUT)
            time.sleep(0.01)

    def upload() -> None:
        headers = {"Authorization": f"Bearer {key}", "content-type": "application/x-ndjson"}
        try:
            outcome["response"] = httpx.post(f"{base}/v1/batches", content=body(), headers=headers, timeout=120)
        except Exception as exc:
            outcome["error"] = exc

    uploader = threading.Thread(target=upload, name="slow-upload")
    uploader.start()
    try:
        assert halfway.wait(30), api.log()
        # Once the server has read what was sent, it has parsed the request line and headers: the request is in
        # flight, not a connection it could still close unanswered.
        wait_until(lambda: unread_by_server(port) == 0, 30, "the API to read the first lines")
        api.popen.send_signal(signal.SIGTERM)
        # Logged once uvicorn has closed its listening socket and found a connection still open: ours.
        wait_until(lambda: b"Waiting for connections to close" in api.log_path.read_bytes(), 30, "the drain")
        late = connect_and_ask(port)
        shutting_down.set()
        uploader.join(EXIT_TIMEOUT)
        assert not uploader.is_alive()
        exit_status = api.popen.wait(EXIT_TIMEOUT)
    finally:
        shutting_down.set()
        uploader.join(EXIT_TIMEOUT)
        api.stop()
    log = api.log()

    # The request in flight completed: 202 with its whole answer, and every line of its body was stored.
    response = outcome.get("response")
    assert isinstance(response, httpx.Response), f"{outcome.get('error')!r}\n{log[-3000:]}"
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["request_total"] == LINES
    assert batch["request_counts"]["processing"] == LINES
    with psycopg.connect(database_url.replace("+psycopg", "")) as db:
        stored = db.execute("SELECT count(*) FROM jobs WHERE batch_id = %s", (batch["id"],)).fetchone()
    assert stored == (LINES,)

    # A client that connected while the server drained was never served. One process closes its listening socket
    # at once, so the connection is refused. With --workers, uvicorn's supervisor keeps the listening socket open
    # until its workers have drained: the kernel completes the handshake and the connection is reset unanswered
    # when the supervisor exits.
    if workers == 1:
        assert late is None, "a new connection was accepted while draining"
    if late is not None:
        assert answer(late) == b""
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/healthz", timeout=5)

    # It drained rather than cancelled, and exited on its own, cleanly.
    assert "timeout graceful shutdown exceeded" not in log
    assert "Finished server process" in log
    assert exit_status == 0, log[-3000:]


def test_sigterm_exit_status_is_0(database: tuple[str, str], tmp_path: Path) -> None:
    api, _ = start_api(database[0], tmp_path, workers=1)
    try:
        api.popen.send_signal(signal.SIGTERM)
        exit_status = api.popen.wait(EXIT_TIMEOUT)
    finally:
        api.stop()
    assert exit_status == 0, api.log()[-3000:]
