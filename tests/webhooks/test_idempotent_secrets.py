"""A webhook secret is shown once, Idempotency-Key or not (issue 14.5): a response that shows one is never stored
in the idempotency table, and a replay of its key answers 409 `idempotency_key_unreplayable` without showing the
secret again or running the request a second time."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import IdempotencyKey, TenantWebhookSecret, WebhookEndpoint
from tests.webhooks.conftest import Receiver

ENDPOINTS = "/v1/webhook-endpoints"


def signing_state(session: Session) -> list[tuple[str, str | None]]:
    """Every secret the tenant signs with: any change means a request ran again."""
    session.expire_all()
    endpoints = session.execute(
        select(WebhookEndpoint.secret, WebhookEndpoint.previous_secret).order_by(WebhookEndpoint.id)
    ).all()
    tenant = session.execute(select(TenantWebhookSecret.secret, TenantWebhookSecret.previous_secret)).all()
    return [(secret, previous) for secret, previous in [*endpoints, *tenant]]


@pytest.mark.parametrize("route", ["create endpoint", "rotate endpoint", "reveal tenant secret", "rotate tenant"])
def test_a_response_showing_a_secret_is_never_kept_nor_replayed(
    wh_client: TestClient, auth: dict[str, str], receiver: Receiver, session: Session, tenant_id: str, route: str
) -> None:
    body: dict[str, Any] | None = None
    if route == "create endpoint":
        path, body = ENDPOINTS, {"url": receiver.url}
    elif route == "rotate endpoint":
        endpoint = wh_client.post(ENDPOINTS, json={"url": receiver.url}, headers=auth).json()
        path = f"{ENDPOINTS}/{endpoint['id']}/rotate-secret"
    elif route == "reveal tenant secret":
        path = "/v1/webhook-secret"
    else:
        assert wh_client.post("/v1/webhook-secret", headers=auth).status_code == 200
        path = "/v1/webhook-secret/rotate"
    keyed = auth | {"Idempotency-Key": "secret-1"}

    first = wh_client.post(path, json=body, headers=keyed)
    assert first.status_code in (200, 201), first.text
    secret = first.json()["secret"]
    assert secret.startswith("whsec_")
    assert first.headers["cache-control"] == "no-store"

    session.expire_all()
    row = session.get(IdempotencyKey, (tenant_id, "secret-1"))
    assert row is not None
    # The key remembers that the request ran and how it ended, and nothing of what it answered.
    assert (row.status_code, row.replayable) == (first.status_code, False)
    assert (row.response_headers, row.response_body) == (None, None)
    secret_core = secret.removeprefix("whsec_")
    assert secret_core not in repr([getattr(row, column.key) for column in IdempotencyKey.__table__.columns])

    before = signing_state(session)
    endpoints = session.scalar(select(func.count()).select_from(WebhookEndpoint))
    again = wh_client.post(path, json=body, headers=keyed)
    assert again.status_code == 409, again.text
    assert again.json()["error"]["type"] == "idempotency_key_unreplayable"
    assert again.json()["error"]["field"] == "Idempotency-Key"
    assert "idempotent-replayed" not in again.headers
    assert secret_core not in again.text
    # Not run again: no second endpoint, no second rotation.
    assert signing_state(session) == before
    assert session.scalar(select(func.count()).select_from(WebhookEndpoint)) == endpoints

    # The same key with another request is still 422, as for any key.
    other = wh_client.post(ENDPOINTS, json={"url": receiver.url + "/other"}, headers=keyed)
    assert other.status_code == 422, other.text
    assert other.json()["error"]["type"] == "idempotency_key_reused"


def test_responses_without_a_secret_are_still_replayed(
    wh_client: TestClient, auth: dict[str, str], receiver: Receiver
) -> None:
    endpoint = wh_client.post(ENDPOINTS, json={"url": receiver.url}, headers=auth).json()
    keyed = auth | {"Idempotency-Key": "no-secret"}
    path = f"{ENDPOINTS}/{endpoint['id']}/rotate-secret"
    # A refusal shows no secret: it is kept and replayed like any other answer.
    first = wh_client.post(f"{ENDPOINTS}/we_missing/rotate-secret", headers=keyed)
    assert first.status_code == 404
    again = wh_client.post(f"{ENDPOINTS}/we_missing/rotate-secret", headers=keyed)
    assert (again.status_code, again.headers.get("idempotent-replayed")) == (404, "true")
    assert again.json() == first.json()
    assert wh_client.post(path, headers=auth).status_code == 200
