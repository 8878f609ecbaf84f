"""The endpoints API: secrets shown once, tenant isolation, field-named validation errors, rotation."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from service.db import utcnow
from service.webhooks.outbox import emit
from tests.conftest import make_key
from tests.webhooks.conftest import Deliverer, Receiver

ENDPOINTS = "/v1/webhook-endpoints"


def create(client: TestClient, auth: dict[str, str], url: str, **extra: Any) -> dict[str, Any]:
    r = client.post(ENDPOINTS, json={"url": url, **extra}, headers=auth)
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_secret_is_shown_once_at_creation(wh_client: TestClient, auth: dict[str, str], receiver: Receiver) -> None:
    created = create(wh_client, auth, receiver.url, description="billing", event_types=["job.succeeded"])
    assert created["id"].startswith("we_")
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) == 32
    assert created["event_types"] == ["job.succeeded"]
    assert created["enabled"] is True
    fetched = wh_client.get(f"{ENDPOINTS}/{created['id']}", headers=auth).json()
    listed = wh_client.get(ENDPOINTS, headers=auth).json()
    assert "secret" not in fetched
    assert [e["id"] for e in listed["data"]] == [created["id"]]
    assert "secret" not in listed["data"][0]
    assert created["secret"] not in wh_client.get(ENDPOINTS, headers=auth).text


def test_another_tenant_gets_404(
    wh_client: TestClient, auth: dict[str, str], session: Session, receiver: Receiver
) -> None:
    endpoint = create(wh_client, auth, receiver.url)
    other = {"Authorization": f"Bearer {make_key(session, 'globex')}"}
    path = f"{ENDPOINTS}/{endpoint['id']}"
    assert wh_client.get(path, headers=other).status_code == 404
    assert wh_client.patch(path, json={"enabled": False}, headers=other).status_code == 404
    assert wh_client.post(path + "/rotate-secret", headers=other).status_code == 404
    assert wh_client.delete(path, headers=other).status_code == 404
    assert wh_client.get(ENDPOINTS, headers=other).json()["data"] == []
    assert wh_client.get(path, headers=auth).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "url"),
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"url": "http://10.1.2.3/hook"}, "url"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, "url"),
        ({"url": "http://user:pw@127.0.0.1/hook"}, "url"),
        ({"url": "http://127.0.0.1/hook", "event_types": ["job.succeeded", "job.exploded"]}, "event_types[1]"),
        ({"url": "http://127.0.0.1/hook", "description": "x" * 501}, "description"),
        ({"url": "http://127.0.0.1/hook", "secret": "mine"}, "secret"),
    ],
)
def test_validation_errors_name_the_field(
    wh_client: TestClient, auth: dict[str, str], body: dict[str, Any], field: str
) -> None:
    r = wh_client.post(ENDPOINTS, json=body, headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert r.json()["error"]["message"].startswith(field)


def test_loopback_is_refused_unless_allowed(client: TestClient, auth: dict[str, str]) -> None:
    # The shared app runs with the production default: MMJOBS_WEBHOOK_ALLOW_LOOPBACK off.
    r = client.post(ENDPOINTS, json={"url": "http://127.0.0.1:9/hook"}, headers=auth)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "url"
    assert "loopback" in r.json()["error"]["message"]


def test_patch_and_delete(wh_client: TestClient, auth: dict[str, str], receiver: Receiver) -> None:
    endpoint = create(wh_client, auth, receiver.url)
    path = f"{ENDPOINTS}/{endpoint['id']}"
    r = wh_client.patch(path, json={"event_types": ["batch.progress", "batch.ended"], "description": "d"}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["event_types"] == ["batch.progress", "batch.ended"]
    assert r.json()["description"] == "d"
    bad = wh_client.patch(path, json={"url": "http://192.168.0.10/"}, headers=auth)
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "url"
    assert wh_client.patch(path, json={"url": None}, headers=auth).json()["error"]["field"] == "url"
    paused = wh_client.patch(path, json={"enabled": False}, headers=auth).json()
    assert paused["enabled"] is False
    assert paused["disabled_reason"] == "disabled through the API"
    resumed = wh_client.patch(path, json={"enabled": True, "url": receiver.url + "/v2"}, headers=auth).json()
    assert resumed["enabled"] is True
    assert resumed["disabled_reason"] is None
    assert resumed["url"] == receiver.url + "/v2"
    assert wh_client.delete(path, headers=auth).status_code == 204
    assert wh_client.get(path, headers=auth).status_code == 404


def test_rotation_signs_with_both_secrets(
    wh_client: TestClient,
    auth: dict[str, str],
    tenant_id: str,
    receiver: Receiver,
    session: Session,
    deliverer: Deliverer,
) -> None:
    endpoint = create(wh_client, auth, receiver.url)
    r = wh_client.post(f"{ENDPOINTS}/{endpoint['id']}/rotate-secret", headers=auth)
    assert r.status_code == 200, r.text
    new_secret = r.json()["secret"]
    assert new_secret != endpoint["secret"]
    assert r.json()["secret_rotation_ends_at"] is not None
    assert "secret" not in wh_client.get(f"{ENDPOINTS}/{endpoint['id']}", headers=auth).json()

    emit(session, tenant_id=tenant_id, type="job.succeeded", data={"id": "job_1"})
    session.commit()
    assert list(deliverer.run(utcnow()).values()) == ["delivered"]
    (request,) = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (endpoint["secret"], new_secret):
        assert Webhook(secret).verify(request.body, request.headers)["data"] == {"id": "job_1"}


def test_tenant_secret_is_shown_once_then_rotated(wh_client: TestClient, auth: dict[str, str]) -> None:
    assert wh_client.get("/v1/webhook-secret", headers=auth).status_code == 404
    first = wh_client.post("/v1/webhook-secret", headers=auth)
    assert first.status_code == 200, first.text
    assert first.json()["secret"].startswith("whsec_")
    again = wh_client.post("/v1/webhook-secret", headers=auth)
    assert again.status_code == 409
    assert again.json()["error"]["type"] == "secret_already_shown"
    about = wh_client.get("/v1/webhook-secret", headers=auth).json()
    assert about["revealed"] is True
    assert "secret" not in about
    rotated = wh_client.post("/v1/webhook-secret/rotate", headers=auth).json()
    assert rotated["secret"] != first.json()["secret"]
    assert rotated["rotation_ends_at"] is not None
