"""Another tenant's ids answer 404 on every endpoint that takes an id; a revoked key answers 401 everywhere;
keys are looked up by their SHA-256 hash, never compared as secrets."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.config import Settings
from service.tenants import repository as tenant_repo
from service.tenants import service as tenants
from service.webhooks.outbox import emit
from tests.conftest import make_key
from tests.media.samples import sample

pytestmark = pytest.mark.security

JOB = {"model": "MiniMax-M2.7", "params": {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}}
HOOK_URL = "https://93.184.216.34/hook"


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"files_dir": str(tmp_path / "files")})


@dataclass
class Owned:
    job: str
    batch: str
    file: str
    schedule: str
    endpoint: str
    delivery: str
    message_batch: str
    openai_file: str
    openai_batch: str


def ok(r: Any, *statuses: int) -> dict[str, Any]:
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    return dict(r.json())


@pytest.fixture
def owned(client: TestClient, auth: dict[str, str], session: Session) -> Owned:
    """One of everything, owned by the `auth` tenant (acme)."""
    job = ok(client.post("/v1/jobs", json=JOB, headers=auth), 202)["id"]
    line = {"custom_id": "r1", **JOB}
    batch = ok(client.post("/v1/batches", json={"requests": [line]}, headers=auth), 202, 201, 200)["id"]
    media = sample("video/mp4", 20_000)
    file = ok(
        client.post(
            "/v1/files",
            files={"file": ("clip.mp4", media, "video/mp4")},
            data={"purpose": "video_understanding"},
            headers=auth,
        ),
        201,
    )["id"]
    schedule = ok(
        client.post(
            "/v1/schedules",
            json={"name": "s", "cron": "0 9 * * 1-5", "timezone": "UTC", "template": {"job": JOB}},
            headers=auth,
        ),
        201,
    )["id"]
    endpoint = ok(client.post("/v1/webhook-endpoints", json={"url": HOOK_URL}, headers=auth), 201, 200)["id"]
    tenant = tenant_repo.get_tenant_by_name(session, name="acme")
    assert tenant is not None
    emit(session, tenant_id=tenant.id, type="job.succeeded", data={"id": job})
    session.commit()
    deliveries = ok(client.get("/v1/webhook-deliveries", headers=auth), 200)["data"]
    assert deliveries, "no delivery to probe"
    message_batch = ok(
        client.post(
            "/anthropic/v1/messages/batches",
            json={"requests": [{"custom_id": "m1", "params": {**JOB["params"], "model": "MiniMax-M2.7"}}]},  # type: ignore[dict-item]
            headers=auth,
        ),
        200,
    )["id"]
    chat = {
        "custom_id": "o1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "MiniMax-M2.7", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
    }
    openai_file = ok(
        client.post(
            "/openai/v1/files",
            files={"file": ("in.jsonl", (json.dumps(chat) + "\n").encode(), "application/jsonl")},
            data={"purpose": "batch"},
            headers=auth,
        ),
        200,
    )["id"]
    openai_batch = ok(
        client.post(
            "/openai/v1/batches",
            json={"input_file_id": openai_file, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
            headers=auth,
        ),
        200,
    )["id"]
    return Owned(job, batch, file, schedule, endpoint, deliveries[0]["id"], message_batch, openai_file, openai_batch)


def id_routes(o: Owned) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every operation that takes an id, with the owner's id in it."""
    return [
        ("GET", f"/v1/jobs/{o.job}", None),
        ("POST", f"/v1/jobs/{o.job}/cancel", None),
        ("GET", f"/v1/jobs?batch_id={o.batch}", None),
        ("GET", f"/v1/batches/{o.batch}", None),
        ("GET", f"/v1/batches/{o.batch}/results", None),
        ("POST", f"/v1/batches/{o.batch}/cancel", None),
        ("DELETE", f"/v1/batches/{o.batch}", None),
        ("GET", f"/v1/files/{o.file}", None),
        ("DELETE", f"/v1/files/{o.file}", None),
        ("GET", f"/v1/schedules/{o.schedule}", None),
        ("PATCH", f"/v1/schedules/{o.schedule}", {"name": "stolen"}),
        ("POST", f"/v1/schedules/{o.schedule}/pause", None),
        ("POST", f"/v1/schedules/{o.schedule}/resume", None),
        ("POST", f"/v1/schedules/{o.schedule}/trigger", None),
        ("GET", f"/v1/schedules/{o.schedule}/runs", None),
        ("DELETE", f"/v1/schedules/{o.schedule}", None),
        ("GET", f"/v1/webhook-endpoints/{o.endpoint}", None),
        ("PATCH", f"/v1/webhook-endpoints/{o.endpoint}", {"enabled": False}),
        ("POST", f"/v1/webhook-endpoints/{o.endpoint}/rotate-secret", None),
        ("DELETE", f"/v1/webhook-endpoints/{o.endpoint}", None),
        ("GET", f"/v1/webhook-deliveries/{o.delivery}", None),
        ("POST", f"/v1/webhook-deliveries/{o.delivery}/redeliver", None),
        ("GET", f"/anthropic/v1/messages/batches/{o.message_batch}", None),
        ("GET", f"/anthropic/v1/messages/batches/{o.message_batch}/results", None),
        ("POST", f"/anthropic/v1/messages/batches/{o.message_batch}/cancel", None),
        ("DELETE", f"/anthropic/v1/messages/batches/{o.message_batch}", None),
        ("GET", f"/openai/v1/files/{o.openai_file}", None),
        ("GET", f"/openai/v1/files/{o.openai_file}/content", None),
        ("DELETE", f"/openai/v1/files/{o.openai_file}", None),
        ("GET", f"/openai/v1/batches/{o.openai_batch}", None),
        ("POST", f"/openai/v1/batches/{o.openai_batch}/cancel", None),
    ]


def test_another_tenants_ids_are_404_everywhere(
    client: TestClient, auth: dict[str, str], session: Session, owned: Owned
) -> None:
    intruder = {"Authorization": f"Bearer {make_key(session, 'intruder')}"}
    for method, path, body in id_routes(owned):
        r = client.request(method, path, json=body, headers=intruder)
        if path.startswith("/v1/jobs?"):
            # A filter, not a lookup: the other tenant's batch lists nothing (or is 404).
            assert r.status_code in (200, 404), (path, r.text)
            assert r.status_code == 404 or r.json()["data"] == [], (path, r.text)
        else:
            assert r.status_code == 404, (method, path, r.status_code, r.text[:300])
    # Nothing was changed by the intruder: every resource still answers its owner.
    for path in [
        f"/v1/jobs/{owned.job}",
        f"/v1/batches/{owned.batch}",
        f"/v1/files/{owned.file}",
        f"/v1/schedules/{owned.schedule}",
        f"/v1/webhook-endpoints/{owned.endpoint}",
        f"/openai/v1/files/{owned.openai_file}",
    ]:
        assert client.get(path, headers=auth).status_code == 200, path
    assert client.get(f"/v1/jobs/{owned.job}", headers=auth).json()["status"] == "queued"
    assert client.get(f"/v1/schedules/{owned.schedule}", headers=auth).json()["name"] == "s"
    assert client.get(f"/v1/webhook-endpoints/{owned.endpoint}", headers=auth).json()["enabled"] is True


def test_another_tenants_lists_show_nothing(client: TestClient, session: Session, owned: Owned) -> None:
    intruder = {"Authorization": f"Bearer {make_key(session, 'intruder')}"}
    for path in [
        "/v1/jobs",
        "/v1/batches",
        "/v1/schedules",
        "/v1/webhook-endpoints",
        "/v1/webhook-deliveries",
        "/anthropic/v1/messages/batches",
        "/openai/v1/batches",
    ]:
        r = client.get(path, headers=intruder)
        assert r.status_code == 200, (path, r.text)
        assert r.json()["data"] == [], (path, r.text[:300])


def _all_operations(client: TestClient, owned: Owned) -> list[tuple[str, str]]:
    spec = client.app.openapi()  # type: ignore[attr-defined]
    values = {
        "job_id": owned.job,
        "batch_id": owned.batch,
        "file_id": owned.file,
        "schedule_id": owned.schedule,
        "endpoint_id": owned.endpoint,
        "delivery_id": owned.delivery,
        "message_batch_id": owned.message_batch,
    }
    out = []
    for path, ops in spec["paths"].items():
        if path in ("/healthz", "/readyz"):
            continue
        for method in ops:
            out.append((method.upper(), path.format(**values)))
    return out


def test_a_revoked_key_is_401_everywhere(client: TestClient, session: Session, owned: Owned) -> None:
    new = tenants.create_key(session, tenant_name="acme")
    session.commit()
    headers = {"Authorization": f"Bearer {new.secret}"}
    assert client.get(f"/v1/jobs/{owned.job}", headers=headers).status_code == 200
    assert tenants.revoke_key(session, key_id=new.key.id)
    session.commit()
    operations = _all_operations(client, owned)
    assert len(operations) > 40
    for header in (headers, {"x-api-key": new.secret}):
        for method, path in operations:
            r = client.request(method, path, headers=header, json={})
            assert r.status_code == 401, (method, path, r.status_code, r.text[:300])
    # A missing key and a made-up one as well.
    for method, path in operations:
        assert client.request(method, path).status_code == 401, (method, path)
        assert client.request(method, path, headers={"x-api-key": "mmj_" + "A" * 43}).status_code == 401, path


def test_keys_are_looked_up_by_sha256_not_compared(monkeypatch: pytest.MonkeyPatch, session: Session) -> None:
    """No timing oracle: the presented secret is hashed and the hash is the database lookup key, so no code ever
    compares secret bytes; only the hash is stored."""
    new = tenants.create_key(session, tenant_name="acme")
    session.commit()
    assert new.key.key_hash == hashlib.sha256(new.secret.encode()).hexdigest()
    assert new.secret not in {new.key.key_hash, new.key.prefix, new.key.name}
    assert len(new.key.prefix) < len(new.secret) // 2

    seen: list[str] = []
    real = tenant_repo.get_active_key

    def spy(s: Session, *, key_hash: str) -> Any:
        seen.append(key_hash)
        return real(s, key_hash=key_hash)

    monkeypatch.setattr(tenant_repo, "get_active_key", spy)
    assert tenants.authenticate(session, secret=new.secret) is not None
    wrong = new.secret[:-1] + ("A" if new.secret[-1] != "A" else "B")
    assert tenants.authenticate(session, secret=wrong) is None
    assert seen == [hashlib.sha256(new.secret.encode()).hexdigest(), hashlib.sha256(wrong.encode()).hexdigest()]


def test_the_key_lookup_queries_the_hash_column(session: Session) -> None:
    import inspect

    source = inspect.getsource(tenant_repo.get_active_key)
    assert "key_hash" in source
    assert "secret" not in source
