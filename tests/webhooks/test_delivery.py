"""emit -> dispatch_due -> deliver against a real local receiver: signatures, retries, failures, disabling."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from service.db import utcnow
from service.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from service.webhooks.outbox import emit
from service.webhooks.retry import MAX_ATTEMPTS
from tests.webhooks.conftest import Deliverer, Receiver

ENDPOINTS = "/v1/webhook-endpoints"


def endpoint(client: TestClient, auth: dict[str, str], url: str, **extra: Any) -> dict[str, Any]:
    r = client.post(ENDPOINTS, json={"url": url, **extra}, headers=auth)
    assert r.status_code == 201, r.text
    return dict(r.json())


def emit_one(session: Session, tenant_id: str, type: str = "job.succeeded", **extra: Any) -> str:
    event_id = emit(session, tenant_id=tenant_id, type=type, data={"id": "job_1", "status": "succeeded"}, **extra)
    session.commit()
    assert event_id is not None
    return event_id


def only_delivery(session: Session, event_id: str) -> WebhookDelivery:
    return session.scalars(select(WebhookDelivery).where(WebhookDelivery.event_id == event_id)).one()


def test_nobody_listening_writes_nothing(session: Session, tenant_id: str) -> None:
    assert emit(session, tenant_id=tenant_id, type="job.failed", data={"id": "job_1"}) is None
    assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 0


def test_signed_envelope_is_delivered(
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    receiver: Receiver,
    deliverer: Deliverer,
) -> None:
    secret = endpoint(wh_client, auth, receiver.url)["secret"]
    event_id = emit_one(session, tenant_id)
    now = utcnow()
    assert deliverer.run(now) == {only_delivery(session, event_id).id: "delivered"}
    (request,) = receiver.requests
    assert request.path == "/hooks"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "minimax-jobs-webhooks"
    assert request.headers["webhook-id"] == event_id
    payload = Webhook(secret).verify(request.body, request.headers)
    assert payload == {
        "id": event_id,
        "type": "job.succeeded",
        "created_at": payload["created_at"],
        "data": {"id": "job_1", "status": "succeeded"},
    }
    assert payload["created_at"].endswith("Z")
    delivery = only_delivery(session, event_id)
    assert delivery.status == "delivered"
    assert delivery.attempt_count == 1
    # Nothing left to publish.
    assert deliverer.dispatch(now + timedelta(hours=1)) == []


def test_500_then_200_makes_two_attempts(
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    receiver: Receiver,
    deliverer: Deliverer,
) -> None:
    endpoint(wh_client, auth, receiver.url)
    event_id = emit_one(session, tenant_id)
    receiver.answer(500, body=b"boom " * 1000)
    now = utcnow()
    assert list(deliverer.run(now).values()) == ["retrying"]
    delivery = deliverer.delivery(only_delivery(session, event_id).id)
    assert delivery.next_attempt_at is not None
    assert timedelta(seconds=4.4) <= delivery.next_attempt_at - now <= timedelta(seconds=5.6)
    assert deliverer.dispatch(now + timedelta(seconds=1)) == []
    assert list(deliverer.run(now + timedelta(seconds=6)).values()) == ["delivered"]
    listed = wh_client.get("/v1/webhook-deliveries", headers=auth).json()["data"]
    (shown,) = listed
    assert shown["status"] == "delivered"
    assert [(a["number"], a["http_status"]) for a in shown["attempts"]] == [(1, 500), (2, 200)]
    assert len(shown["attempts"][0]["response_body"]) == 2048
    assert shown["attempts"][0]["latency_ms"] >= 0
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1


def test_redirect_is_a_failure_and_is_not_followed(
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    receiver: Receiver,
    other_receiver: Receiver,
    deliverer: Deliverer,
) -> None:
    endpoint(wh_client, auth, receiver.url)
    receiver.answer(307, {"location": other_receiver.url})
    event_id = emit_one(session, tenant_id)
    assert list(deliverer.run(utcnow()).values()) == ["retrying"]
    assert other_receiver.requests == []
    (attempt,) = session.scalars(select(WebhookAttempt)).all()
    assert attempt.http_status == 307
    assert only_delivery(session, event_id).status == "pending"


def test_410_disables_the_endpoint_and_tells_the_others(
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    receiver: Receiver,
    other_receiver: Receiver,
    deliverer: Deliverer,
) -> None:
    gone = endpoint(wh_client, auth, receiver.url, event_types=["job.succeeded"])
    other = endpoint(wh_client, auth, other_receiver.url, event_types=["webhook_endpoint.disabled"])
    receiver.answer(410)
    emit_one(session, tenant_id)
    assert list(deliverer.run(utcnow()).values()) == ["failed"]
    shown = wh_client.get(f"{ENDPOINTS}/{gone['id']}", headers=auth).json()
    assert shown["enabled"] is False
    assert "410" in shown["disabled_reason"]
    assert list(deliverer.run(utcnow()).values()) == ["delivered"]
    (told,) = other_receiver.requests
    payload = Webhook(other["secret"]).verify(told.body, told.headers)
    assert payload["type"] == "webhook_endpoint.disabled"
    assert payload["data"]["id"] == gone["id"]
    assert "410" in payload["data"]["disabled_reason"]
    # A disabled endpoint gets nothing more.
    assert emit(session, tenant_id=tenant_id, type="job.succeeded", data={}) is None


def test_retry_after_is_honoured_when_longer(
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    receiver: Receiver,
    deliverer: Deliverer,
) -> None:
    endpoint(wh_client, auth, receiver.url)
    receiver.answer(503, {"retry-after": "120"})
    event_id = emit_one(session, tenant_id)
    now = utcnow()
    deliverer.run(now)
    due = only_delivery(session, event_id).next_attempt_at
    assert due is not None
    assert timedelta(seconds=119) <= due - now <= timedelta(seconds=121)
    assert deliverer.dispatch(now + timedelta(seconds=60)) == []


def test_five_days_of_failures_disable_the_endpoint(
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    receiver: Receiver,
    other_receiver: Receiver,
    deliverer: Deliverer,
) -> None:
    failing = endpoint(wh_client, auth, receiver.url, event_types=["job.failed"])
    endpoint(wh_client, auth, other_receiver.url)
    receiver.answer(500)
    emit_one(session, tenant_id, type="job.failed")
    now = utcnow()
    assert sorted(deliverer.run(now).values()) == ["delivered", "retrying"]
    assert wh_client.get(f"{ENDPOINTS}/{failing['id']}", headers=auth).json()["enabled"] is True
    # The failures went on: the run began more than five days before the next failed attempt.
    session.execute(
        update(WebhookEndpoint).where(WebhookEndpoint.id == failing["id"]).values(failing_since=now - timedelta(days=5))
    )
    session.commit()
    receiver.answer(500)
    later = now + timedelta(seconds=10)
    assert list(deliverer.run(later).values()) == ["failed"]
    shown = wh_client.get(f"{ENDPOINTS}/{failing['id']}", headers=auth).json()
    assert shown["enabled"] is False
    assert "5 days" in shown["disabled_reason"]
    told = wh_client.get("/v1/webhook-deliveries", params={"event_type": "webhook_endpoint.disabled"}, headers=auth)
    (notice,) = told.json()["data"]
    assert notice["endpoint_id"] != failing["id"]
    deliverer.run(later)
    assert json.loads(other_receiver.requests[-1].body)["type"] == "webhook_endpoint.disabled"


def test_success_ends_a_failure_run(
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    receiver: Receiver,
    deliverer: Deliverer,
) -> None:
    created = endpoint(wh_client, auth, receiver.url)
    receiver.answer(500)
    emit_one(session, tenant_id)
    now = utcnow()
    deliverer.run(now)
    row = session.get(WebhookEndpoint, created["id"], populate_existing=True)
    assert row is not None
    assert row.failing_since is not None
    deliverer.run(now + timedelta(seconds=6))
    session.refresh(row)
    assert row.failing_since is None


def test_gives_up_after_the_schedule(
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    receiver: Receiver,
    deliverer: Deliverer,
) -> None:
    endpoint(wh_client, auth, receiver.url)
    event_id = emit_one(session, tenant_id)
    delivery_id = only_delivery(session, event_id).id
    now = utcnow()
    for _ in range(MAX_ATTEMPTS):
        receiver.answer(500)
        delivery = deliverer.delivery(delivery_id)
        assert delivery.next_attempt_at is not None
        now = max(now, delivery.next_attempt_at)
        deliverer.run(now)
    delivery = deliverer.delivery(delivery_id)
    assert delivery.status == "failed"
    assert delivery.attempt_count == MAX_ATTEMPTS
    assert delivery.error == f"gave up after {MAX_ATTEMPTS} attempts"
    assert len(receiver.requests) == MAX_ATTEMPTS


def test_duplicate_task_does_not_send_twice(
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    receiver: Receiver,
    deliverer: Deliverer,
) -> None:
    endpoint(wh_client, auth, receiver.url)
    emit_one(session, tenant_id)
    now = utcnow()
    (delivery_id,) = deliverer.dispatch(now)
    assert deliverer.deliver(delivery_id, now) == "delivered"
    assert deliverer.deliver(delivery_id, now) == "skipped"
    assert len(receiver.requests) == 1


def test_a_lost_message_is_published_again(
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    receiver: Receiver,
    deliverer: Deliverer,
) -> None:
    endpoint(wh_client, auth, receiver.url)
    emit_one(session, tenant_id)
    now = utcnow()
    (first,) = deliverer.dispatch(now)
    assert deliverer.dispatch(now + timedelta(seconds=30)) == []
    assert deliverer.dispatch(now + timedelta(minutes=3)) == [first]


def test_per_job_url_is_signed_with_the_tenant_secret(
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    receiver: Receiver,
    deliverer: Deliverer,
) -> None:
    event_id = emit_one(session, tenant_id, webhook_url=receiver.url + "/job")
    secret = wh_client.post("/v1/webhook-secret", headers=auth).json()["secret"]
    assert list(deliverer.run(utcnow()).values()) == ["delivered"]
    (request,) = receiver.requests
    assert request.path == "/hooks/job"
    assert Webhook(secret).verify(request.body, request.headers)["id"] == event_id
    shown = wh_client.get("/v1/webhook-deliveries", headers=auth).json()["data"][0]
    assert shown["endpoint_id"] is None
    assert shown["url"] == receiver.url + "/job"


def test_opt_in_types_go_only_to_endpoints_that_list_them(
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    receiver: Receiver,
    other_receiver: Receiver,
) -> None:
    every_default = endpoint(wh_client, auth, receiver.url)
    listing = endpoint(wh_client, auth, other_receiver.url, event_types=["batch.progress"])
    progress = emit_one(session, tenant_id, type="batch.progress")
    assert only_delivery(session, progress).endpoint_id == listing["id"]
    ended = emit_one(session, tenant_id, type="batch.ended")
    assert only_delivery(session, ended).endpoint_id == every_default["id"]


def test_redeliver_sends_again_now(
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    receiver: Receiver,
    deliverer: Deliverer,
) -> None:
    endpoint(wh_client, auth, receiver.url)
    event_id = emit_one(session, tenant_id)
    deliverer.run(utcnow())
    delivery_id = only_delivery(session, event_id).id
    r = wh_client.post(f"/v1/webhook-deliveries/{delivery_id}/redeliver", headers=auth)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "pending"
    assert list(deliverer.run(utcnow()).values()) == ["delivered"]
    assert [q.headers["webhook-id"] for q in receiver.requests] == [event_id, event_id]
    shown = wh_client.get(f"/v1/webhook-deliveries/{delivery_id}", headers=auth).json()
    assert [a["number"] for a in shown["attempts"]] == [1, 2]


def test_a_disabled_endpoint_gets_nothing(
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    receiver: Receiver,
    deliverer: Deliverer,
) -> None:
    created = endpoint(wh_client, auth, receiver.url)
    event_id = emit_one(session, tenant_id)
    (delivery_id,) = deliverer.dispatch(utcnow())
    wh_client.patch(f"{ENDPOINTS}/{created['id']}", json={"enabled": False}, headers=auth)
    assert deliverer.deliver(delivery_id, utcnow()) == "skipped"
    assert only_delivery(session, event_id).status == "failed"
    assert receiver.requests == []
    r = wh_client.post(f"/v1/webhook-deliveries/{delivery_id}/redeliver", headers=auth)
    assert r.status_code == 409
    assert r.json()["error"]["type"] == "endpoint_disabled"
