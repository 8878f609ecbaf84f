"""GET /v1/webhook-deliveries: filters, pagination, attempts, tenant isolation."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.db import utcnow
from service.webhooks.outbox import emit
from tests.conftest import make_key
from tests.webhooks.conftest import Deliverer, Receiver

DELIVERIES = "/v1/webhook-deliveries"


def test_filters_and_pages(
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    session: Session,
    receiver: Receiver,
    other_receiver: Receiver,
    deliverer: Deliverer,
) -> None:
    first = wh_client.post("/v1/webhook-endpoints", json={"url": receiver.url}, headers=auth).json()
    second = wh_client.post("/v1/webhook-endpoints", json={"url": other_receiver.url}, headers=auth).json()
    for i in range(3):
        emit(session, tenant_id=tenant_id, type="job.succeeded", data={"id": f"job_{i}"})
    emit(session, tenant_id=tenant_id, type="batch.ended", data={"id": "batch_1"})
    session.commit()
    other_receiver.answer(500)
    deliverer.run(utcnow())

    def ids(**params: str | int) -> list[str]:
        r = wh_client.get(DELIVERIES, params=params, headers=auth)
        assert r.status_code == 200, r.text
        return [d["id"] for d in r.json()["data"]]

    everything = ids(limit=50)
    assert len(everything) == 8
    assert everything == sorted(everything, reverse=True)  # newest first
    assert len(ids(endpoint_id=first["id"])) == 4
    assert len(ids(event_type="batch.ended")) == 2
    assert len(ids(status="pending")) == 1  # the 500
    assert len(ids(status="delivered")) == 7
    assert ids(status="failed") == []
    (pending,) = wh_client.get(DELIVERIES, params={"status": "pending"}, headers=auth).json()["data"]
    assert pending["endpoint_id"] == second["id"]
    assert pending["attempts"][0]["http_status"] == 500
    assert pending["next_attempt_at"] is not None

    page = wh_client.get(DELIVERIES, params={"limit": 3}, headers=auth).json()
    walked = [d["id"] for d in page["data"]]
    while page["has_more"]:
        page = wh_client.get(DELIVERIES, params={"limit": 3, "cursor": page["next_cursor"]}, headers=auth).json()
        walked += [d["id"] for d in page["data"]]
    assert walked == everything

    bad = wh_client.get(DELIVERIES, params={"status": "lost"}, headers=auth)
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "status"
    assert wh_client.get(DELIVERIES, params={"event_type": "job.nope"}, headers=auth).status_code == 422


def test_another_tenant_sees_nothing(
    wh_client: TestClient, auth: dict[str, str], tenant_id: str, session: Session, receiver: Receiver
) -> None:
    wh_client.post("/v1/webhook-endpoints", json={"url": receiver.url}, headers=auth)
    emit(session, tenant_id=tenant_id, type="job.failed", data={"id": "job_1"})
    session.commit()
    (delivery,) = wh_client.get(DELIVERIES, headers=auth).json()["data"]
    other = {"Authorization": f"Bearer {make_key(session, 'globex')}"}
    assert wh_client.get(DELIVERIES, headers=other).json()["data"] == []
    assert wh_client.get(f"{DELIVERIES}/{delivery['id']}", headers=other).status_code == 404
    assert wh_client.post(f"{DELIVERIES}/{delivery['id']}/redeliver", headers=other).status_code == 404
