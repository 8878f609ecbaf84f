"""Slow uploads do not hold database connections (issue 13 point 5): the API-key lookup's transaction ends before
the body is read, so more uploads in flight than the pool has connections leave room for every other request.

A real uvicorn server in a thread (the API pool is per process, as in production) with a pool of 3 connections
and no overflow; 5 uploads per upload route send their first bytes and then stall until the test lets them go.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.app import create_app
from service.config import Settings
from service.db import make_engine, make_session_factory, transaction
from service.tenants import service as tenants
from tests.conftest import TEST_REDIS_URL
from tests.db import drop_database, fresh_database
from tests.procs import free_port, wait_until

POOL = 3
UPLOADS = POOL + 2
DATABASE = "mmjobs_upload_pool"


class BodyReadSignal:
    """Counts upload requests whose route has started reading the body: by then authentication has run, and
    before the fix each of them held a pooled connection from that point on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.reading = 0
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        counted = False

        async def observed() -> Any:
            nonlocal counted
            if not counted:
                counted = True
                with self._lock:
                    self.reading += 1
            return await receive()

        await self.app(scope, observed, send)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, BodyReadSignal]]:
    url = fresh_database(DATABASE)
    settings = Settings(
        database_url=url,
        redis_url=TEST_REDIS_URL,
        db_pool_size=POOL,
        db_max_overflow=0,
        minimax_api_key=None,
        files_dir=str(tmp_path_factory.mktemp("files")),
    )
    app = BodyReadSignal(create_app(settings))
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    engine = make_engine(url)
    try:
        wait_until(lambda: uv.started, 30, "the API server")
        with transaction(make_session_factory(engine)) as session:
            secret = tenants.create_key(session, tenant_name="uploads").secret
        yield f"http://127.0.0.1:{port}", secret, app
    finally:
        uv.should_exit = True
        thread.join(15)
        engine.dispose()
        drop_database(DATABASE)


def _line(i: int) -> bytes:
    body = {"custom_id": f"r{i}", "model": "MiniMax-M2.7", "params": {"max_tokens": 16, "messages": [
        {"role": "user", "content": f"request {i}"}]}}  # fmt: skip
    return json.dumps(body).encode() + b"\n"


def _stalled(first: bytes, rest: bytes, go: threading.Event) -> Iterator[bytes]:
    """A streamed body: its first bytes at once, the rest once the test sets `go`."""
    yield first
    go.wait(60)
    yield rest


def _multipart(boundary: str, name: str, filename: str, content: bytes, fields: dict[str, str]) -> tuple[bytes, bytes]:
    """A multipart body cut in two inside the file part."""
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    )
    head += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode()
    head += b"Content-Type: application/octet-stream\r\n\r\n" + content[: len(content) // 2]
    tail = content[len(content) // 2 :] + f"\r\n--{boundary}--\r\n".encode()
    return head, tail


def _upload(kind: str, base: str, auth: dict[str, str], go: threading.Event, i: int) -> httpx.Response:
    if kind == "jsonl":
        first, rest = _line(2 * i), _line(2 * i + 1)
        headers = {**auth, "content-type": "application/x-ndjson"}
        path = "/v1/batches"
    elif kind == "documents":
        text = (f"Document {i}. " * 200).encode()
        form = {"model": "MiniMax-M2.7", "prompt": "Summarise {document}"}
        first, rest = _multipart("bnd", "files", f"doc{i}.txt", text, form)
        headers = {**auth, "content-type": "multipart/form-data; boundary=bnd"}
        path = "/v1/batches/documents"
    elif kind == "anthropic":  # the Anthropic drop-in's Message Batches, its SDK's auth header
        line = json.dumps({"custom_id": f"r{i}", "params": {"model": "MiniMax-M2.7", "max_tokens": 16,
                           "messages": [{"role": "user", "content": f"request {i}"}]}})  # fmt: skip
        body = f'{{"requests": [{line}]}}'.encode()
        first, rest = body[: len(body) // 2], body[len(body) // 2 :]
        headers = {"x-api-key": auth["Authorization"].removeprefix("Bearer "), "content-type": "application/json"}
        path = "/anthropic/v1/messages/batches"
    else:  # an image for the media store
        png = _png()
        first, rest = _multipart("bnd", "file", f"img{i}.png", png, {"purpose": "image"})
        headers = {**auth, "content-type": "multipart/form-data; boundary=bnd"}
        path = "/v1/files"
    with httpx.Client(base_url=base, timeout=120) as client:
        return client.post(path, content=_stalled(first, rest, go), headers=headers)


def _png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 8 for _ in range(8))
    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("kind", ["jsonl", "documents", "media", "anthropic"])
def test_slow_uploads_leave_the_pool_to_other_requests(server: tuple[str, str, BodyReadSignal], kind: str) -> None:
    base, secret, app = server
    auth = {"Authorization": f"Bearer {secret}"}
    go = threading.Event()
    before = app.reading
    with ThreadPoolExecutor(UPLOADS) as pool:
        uploads: list[Future[httpx.Response]] = [pool.submit(_upload, kind, base, auth, go, i) for i in range(UPLOADS)]
        try:
            # Every upload is past authentication and inside its route, its body only half sent.
            wait_until(lambda: app.reading - before >= UPLOADS, 30, f"{UPLOADS} uploads to reach their routes")
            assert not any(f.done() for f in uploads)
            # More uploads in flight than the pool has connections, and an ordinary request still gets one
            # (before the fix it waited out the pool timeout and failed with a 500).
            r = httpx.get(base + "/v1/jobs", headers=auth, timeout=120)
            assert r.status_code == 200, r.text
            assert not any(f.done() for f in uploads)
        finally:
            go.set()
        answers = [f.result() for f in uploads]
    expected = {"media": 201, "anthropic": 200}.get(kind, 202)
    assert [a.status_code for a in answers] == [expected] * UPLOADS, [a.text for a in answers]
