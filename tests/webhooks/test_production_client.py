"""The client the Celery task really delivers with (issue 14.8): every other delivery test injects its own, so
these take the one `deliver_webhook_task` builds in production and prove it is the SSRF-guarded client, with the
15 s timeout that MMJOBS_WEBHOOK_TIMEOUT_SECONDS sets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service import netguard
from service.config import Settings
from service.db import utcnow
from service.models import WebhookAttempt, WebhookDelivery
from service.webhooks.outbox import emit
from tests.conftest import TEST_REDIS_URL
from tests.webhooks.conftest import Deliverer, Receiver
from workers import webhooks
from workers.runtime import Calls


@pytest.fixture
def used_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[httpx.Client]]:
    """Each client the production task hands to `deliver`, recorded on its way (the real `deliver` still runs).
    The per-process client is reset before and after, so each test builds it from its own settings."""
    seen: list[httpx.Client] = []
    real = webhooks.deliver

    def recording(factory: sessionmaker[Session], delivery_id: str, *, client: httpx.Client) -> str:
        seen.append(client)
        return real(factory, delivery_id, client=client)

    monkeypatch.setattr(webhooks, "_client", None)
    monkeypatch.setattr(webhooks, "deliver", recording)
    yield seen
    if webhooks._client is not None:
        webhooks._client.close()
    webhooks._client = None


def production_settings(settings: Settings) -> Settings:
    """What a worker reads from its environment: our database and Redis, every webhook setting left as shipped."""
    return Settings(database_url=settings.database_url, redis_url=TEST_REDIS_URL, minimax_api_key=None)


def run_task(
    monkeypatch: pytest.MonkeyPatch, factory: sessionmaker[Session], settings: Settings, delivery_id: str
) -> None:
    """The task as a worker runs it: it starts the delivery on a call thread and returns; this waits for the thread.
    The task's runtime has the test's session factory (its transaction), the settings given and its own calls."""
    calls = Calls(1)
    rt = SimpleNamespace(session_factory=factory, settings=settings, calls=calls)
    monkeypatch.setattr(webhooks, "get_runtime", lambda: rt)
    webhooks.deliver_webhook_task(delivery_id)
    wait_idle(calls)


def wait_idle(calls: Calls) -> None:
    """Until the deliveries started on `calls` have ended."""
    deadline = time.monotonic() + 30
    while calls.busy():
        assert time.monotonic() < deadline, "the delivery did not end"
        time.sleep(0.02)


def test_the_task_refuses_loopback_and_private_addresses(
    monkeypatch: pytest.MonkeyPatch,
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    session_factory: sessionmaker[Session],
    settings: Settings,
    receiver: Receiver,
    deliverer: Deliverer,
    used_clients: list[httpx.Client],
) -> None:
    # Registered through an API that allows loopback (as the tests' receivers need); delivered by a worker with
    # the shipped settings, which do not.
    r = wh_client.post("/v1/webhook-endpoints", json={"url": receiver.url}, headers=auth)
    assert r.status_code == 201, r.text
    emit(session, tenant_id=tenant_id, type="job.succeeded", data={"id": "job_1"})
    session.commit()
    (delivery_id,) = deliverer.dispatch(utcnow())

    run_task(monkeypatch, session_factory, production_settings(settings), delivery_id)

    assert receiver.requests == []  # nothing reached the listening receiver
    (attempt,) = session.scalars(select(WebhookAttempt)).all()
    assert attempt.http_status is None
    assert attempt.error is not None
    assert attempt.error.startswith("refused: 127.0.0.1 is a loopback address")
    delivery = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    assert delivery is not None
    assert delivery.status == "pending"

    (client,) = used_clients
    # The same client refuses a private and a metadata address before any connection is tried.
    for url in ("http://10.1.2.3/hook", "http://169.254.169.254/latest/meta-data/", "http://[::ffff:192.168.0.1]/"):
        with pytest.raises(netguard.RefusedRequest):
            client.post(url, content=b"{}")
    assert client.follow_redirects is False


def test_the_task_client_has_the_15_second_timeout(
    monkeypatch: pytest.MonkeyPatch,
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    session_factory: sessionmaker[Session],
    settings: Settings,
    receiver: Receiver,
    deliverer: Deliverer,
    used_clients: list[httpx.Client],
) -> None:
    monkeypatch.delenv("MMJOBS_WEBHOOK_TIMEOUT_SECONDS", raising=False)
    shipped = production_settings(settings)
    assert shipped.webhook_timeout_seconds == 15.0
    wh_client.post("/v1/webhook-endpoints", json={"url": receiver.url}, headers=auth)
    emit(session, tenant_id=tenant_id, type="job.succeeded", data={"id": "job_1"})
    session.commit()
    (delivery_id,) = deliverer.dispatch(utcnow())

    run_task(monkeypatch, session_factory, shipped, delivery_id)

    (client,) = used_clients
    assert client.timeout == httpx.Timeout(15.0)  # connect, read, write and pool, each 15 s
    assert isinstance(client._transport, netguard.GuardedTransport)


def test_the_timeout_follows_the_setting(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setenv("MMJOBS_WEBHOOK_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setattr(webhooks, "_client", None)
    try:
        client = webhooks.http_client(production_settings(settings))
        assert client.timeout == httpx.Timeout(2.5)
        assert isinstance(client._transport, netguard.GuardedTransport)
        assert client._transport.allow_loopback is False
    finally:
        if webhooks._client is not None:
            webhooks._client.close()
        webhooks._client = None


def test_a_slow_endpoint_holds_a_call_thread_not_the_receiver(
    monkeypatch: pytest.MonkeyPatch,
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    session_factory: sessionmaker[Session],
    loopback_settings: Settings,
    receiver: Receiver,
    deliverer: Deliverer,
    used_clients: list[httpx.Client],
) -> None:
    """A worker has a few Celery receivers for all its messages: an endpoint that takes its time to answer must not
    keep one from the next message. The task starts the delivery on a call thread and returns; with no call thread
    free within a moment it passes the delivery on."""
    receiver.delay = 1.5
    wh_client.post("/v1/webhook-endpoints", json={"url": receiver.url}, headers=auth)
    for n in (1, 2):
        emit(session, tenant_id=tenant_id, type="job.succeeded", data={"id": f"job_{n}"})
    session.commit()
    first, second = deliverer.dispatch(utcnow())
    calls = Calls(1)
    monkeypatch.setattr(
        webhooks, "get_runtime", lambda: SimpleNamespace(session_factory=session_factory, settings=loopback_settings,
                                                         calls=calls)
    )  # fmt: skip
    passed: list[str] = []
    monkeypatch.setattr(webhooks, "publisher", lambda _app: passed.append)
    started = time.monotonic()
    webhooks.deliver_webhook_task(first)
    assert time.monotonic() - started < 1.0  # returned while the endpoint still takes its time
    webhooks.deliver_webhook_task(second)  # the only call thread is busy: passed on after a moment
    assert passed == [second]
    wait_idle(calls)
    assert len(receiver.requests) == 1
    assert deliverer.delivery(first).status == "delivered"
