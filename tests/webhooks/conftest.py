"""A real HTTP receiver on 127.0.0.1, an API and a delivery client that may reach loopback (and only loopback)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service import netguard
from service.api.app import create_app
from service.config import Settings
from service.models import Tenant, WebhookDelivery
from workers import webhooks


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers each POST with the next queued (status, headers, body), or 200 when none is queued."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    answers: deque[tuple[int, dict[str, str], bytes]] = field(default_factory=deque)
    delay: float = 0.0  # seconds before each answer (a slow endpoint)

    def answer(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.answers.append((status, headers or {}, body))


def _serve(receiver: Receiver) -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            time.sleep(receiver.delay)
            status, headers, reply = receiver.answers.popleft() if receiver.answers else (200, {}, b"ok")
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_port}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve(Receiver())


@pytest.fixture
def other_receiver() -> Iterator[Receiver]:
    yield from _serve(Receiver())


@pytest.fixture
def tenant_id(session: Session, api_key: str) -> str:
    """The tenant of `api_key` / `auth` ("acme")."""
    return session.scalars(select(Tenant.id).where(Tenant.name == "acme")).one()


@pytest.fixture
def loopback_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_allow_loopback": True})


@pytest.fixture
def wh_app(loopback_settings: Settings, session_factory: sessionmaker[Session]) -> FastAPI:
    app = create_app(loopback_settings)
    app.state.session_factory = session_factory
    return app


@pytest.fixture
def wh_client(wh_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(wh_app) as c:
        yield c


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    client = netguard.guarded_client(allow_loopback=True, timeout=5)
    yield client
    client.close()


class Deliverer:
    """Runs the scheduler's half (dispatch_due) and the worker's half (deliver) in the test's transaction."""

    def __init__(self, factory: sessionmaker[Session], session: Session, http: httpx.Client) -> None:
        self.factory = factory
        self.session = session
        self.http = http
        self.published: list[str] = []

    def dispatch(self, now: datetime) -> list[str]:
        before = len(self.published)
        with self.factory() as s:
            webhooks.dispatch_due(s, now=now, publish=self.published.append)
            s.commit()
        return self.published[before:]

    def deliver(self, delivery_id: str, now: datetime) -> str:
        return webhooks.deliver(self.factory, delivery_id, client=self.http, now=now)

    def run(self, now: datetime) -> dict[str, str]:
        """Dispatch what is due at `now` and deliver each: {delivery_id: outcome}."""
        return {i: self.deliver(i, now) for i in self.dispatch(now)}

    def delivery(self, delivery_id: str) -> WebhookDelivery:
        row = self.session.get(WebhookDelivery, delivery_id, populate_existing=True)
        assert row is not None
        return row


@pytest.fixture
def deliverer(session_factory: sessionmaker[Session], session: Session, http: httpx.Client) -> Deliverer:
    return Deliverer(session_factory, session, http)
