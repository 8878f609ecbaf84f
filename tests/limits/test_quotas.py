"""The maxima per tenant at intake (issue 14.3): each refuses the next create with the limit named and stores
nothing; operator defaults and a tenant's overrides both show in GET /v1/limits; a disabled tenant creates
nothing (14.4)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import Settings
from service.models import Batch, File, Job, Schedule, Tenant
from service.tenants import repository as tenants_repo
from service.tenants import service as tenants
from tests.conftest import make_key
from tests.media.samples import sample

JOB: dict[str, Any] = {
    "model": "MiniMax-M2.7",
    "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
}


def line(i: int) -> dict[str, Any]:
    return {"custom_id": f"r{i}", **JOB}


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    # Operator defaults for this module; single tests lay tenant overrides over them.
    return settings.model_copy(
        update={
            "files_dir": str(tmp_path / "files"),
            "max_queued_jobs": 3,
            "max_active_batches": 0,
            "max_schedules": 0,
            "max_stored_file_bytes": 0,
        }
    )


@pytest.fixture
def app(settings: Settings, session_factory: sessionmaker[Session]) -> FastAPI:
    app = create_app(settings)
    app.state.session_factory = session_factory
    return app


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def count(session: Session, model: type[Any], tenant: str) -> int:
    session.expire_all()
    query = select(func.count()).select_from(model).join(Tenant, Tenant.id == model.tenant_id)
    return int(session.scalar(query.where(Tenant.name == tenant)) or 0)


def refused(r: Any, status: int, limit: str) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == "limit_exceeded"
    assert error["message"].startswith(f"{limit}: ")
    return str(error["message"])


def override(session: Session, tenant: str, **changes: int | None) -> None:
    assert tenants_repo.set_caps(session, name=tenant, changes=changes)
    session.commit()


def test_max_queued_jobs_refuses_the_next_job_or_batch_and_stores_nothing(client: TestClient, session: Session) -> None:
    auth = {"Authorization": f"Bearer {make_key(session, 'q')}"}
    ids = [client.post("/v1/jobs", json=JOB, headers=auth).json()["id"] for _ in range(3)]
    message = refused(client.post("/v1/jobs", json=JOB, headers=auth), 429, "max_queued_jobs")
    assert "at most 3 jobs waiting" in message
    assert "it has 3 and this request adds 1" in message
    assert count(session, Job, "q") == 3
    # A batch when the tenant is already full is refused before its body is read.
    refused(client.post("/v1/batches", json={"requests": [line(0)]}, headers=auth), 429, "max_queued_jobs")
    assert (count(session, Batch, "q"), count(session, Job, "q")) == (0, 3)
    # One canceled leaves room for one: a batch of two is refused whole, once every line was read.
    assert client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth).status_code == 200
    message = refused(client.post("/v1/batches", json={"requests": [line(0), line(1)]}, headers=auth), 429,
                      "max_queued_jobs")  # fmt: skip
    assert "it has 2 and this request adds 2" in message
    assert (count(session, Batch, "q"), count(session, Job, "q")) == (0, 3)
    assert client.post("/v1/batches", json={"requests": [line(0)]}, headers=auth).status_code == 202
    assert (count(session, Batch, "q"), count(session, Job, "q")) == (1, 4)
    # Another tenant has its own count.
    other = {"Authorization": f"Bearer {make_key(session, 'q-other')}"}
    assert client.post("/v1/jobs", json=JOB, headers=other).status_code == 202


def test_max_active_batches_from_a_tenant_override(client: TestClient, session: Session) -> None:
    auth = {"Authorization": f"Bearer {make_key(session, 'b')}"}
    override(session, "b", max_active_batches=1, max_queued_jobs=0)  # 0: this tenant has no queued-jobs maximum
    first = client.post("/v1/batches", json={"requests": [line(i) for i in range(5)]}, headers=auth)
    assert first.status_code == 202, first.text
    message = refused(client.post("/v1/batches", json={"requests": [line(0)]}, headers=auth), 429, "max_active_batches")
    assert "at most 1 batches in progress; it has 1 already" in message
    # JSONL and the Anthropic drop-in meet the same maximum.
    jsonl = (json.dumps(line(0)) + "\n").encode()
    r = client.post("/v1/batches", content=jsonl, headers={**auth, "content-type": "application/x-ndjson"})
    refused(r, 429, "max_active_batches")
    anthropic = {"requests": [{"custom_id": "a", "params": {"model": "MiniMax-M2.7", **JOB["params"]}}]}
    r = client.post("/anthropic/v1/messages/batches", json=anthropic, headers=auth)
    assert r.status_code == 429, r.text
    assert "max_active_batches" in r.text
    assert (count(session, Batch, "b"), count(session, Job, "b")) == (1, 5)


def test_max_schedules_refuses_with_409_and_stores_nothing(client: TestClient, session: Session) -> None:
    auth = {"Authorization": f"Bearer {make_key(session, 's')}"}
    override(session, "s", max_schedules=1)
    body = {"name": "n", "cron": "0 * * * *", "template": {"job": JOB}}
    assert client.post("/v1/schedules", json=body, headers=auth).status_code == 201
    message = refused(client.post("/v1/schedules", json=body, headers=auth), 409, "max_schedules")
    assert "Delete one first" in message
    assert count(session, Schedule, "s") == 1


def test_max_stored_file_bytes_refuses_the_upload_and_keeps_no_bytes(
    client: TestClient, session: Session, settings: Settings
) -> None:
    auth = {"Authorization": f"Bearer {make_key(session, 'f')}"}
    override(session, "f", max_stored_file_bytes=3000)
    video = sample("video/mp4", 2000)
    form = {"purpose": "video_understanding"}
    first = client.post("/v1/files", files={"file": ("a.mp4", video, "video/mp4")}, data=form, headers=auth)
    assert first.status_code == 201, first.text
    r = client.post("/v1/files", files={"file": ("b.mp4", video, "video/mp4")}, data=form, headers=auth)
    message = refused(r, 409, "max_stored_file_bytes")
    assert "at most 3,000 bytes" in message
    assert "it has 2,000 and this request adds 2,000" in message
    jsonl = (json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {}}) + "\n") * 40
    r = client.post("/openai/v1/files", files={"file": ("in.jsonl", jsonl.encode(), "application/jsonl")},
                    data={"purpose": "batch"}, headers=auth)  # fmt: skip
    assert r.status_code == 409, r.text
    assert "max_stored_file_bytes" in r.text
    assert count(session, File, "f") == 1
    stored = sorted(p.name for p in Path(str(settings.files_dir)).rglob("*") if p.is_file())
    assert stored == [first.json()["id"]]  # the refused uploads' bytes were removed


def test_a_disabled_tenant_creates_nothing_but_can_read(client: TestClient, session: Session) -> None:
    auth = {"Authorization": f"Bearer {make_key(session, 'd')}"}
    job_id = client.post("/v1/jobs", json=JOB, headers=auth).json()["id"]
    assert tenants.disable(session, name="d") is not None
    session.commit()
    for path, body in (("/v1/jobs", JOB), ("/v1/batches", {"requests": [line(0)]}),
                       ("/v1/schedules", {"name": "n", "cron": "@daily", "template": {"job": JOB}})):  # fmt: skip
        r = client.post(path, json=body, headers=auth)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["type"] == "tenant_disabled"
    assert count(session, Job, "d") == 1
    shown = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert shown["waiting"] == {"reason": "tenant_disabled", "limit": None, "until": None, "detail": None}
    assert client.get("/v1/limits", headers=auth).json()["intake"]["disabled"] is True
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200


def test_limits_show_operator_defaults_and_tenant_overrides_with_usage(client: TestClient, session: Session) -> None:
    auth = {"Authorization": f"Bearer {make_key(session, 'l')}"}
    override(session, "l", max_schedules=7, requests_per_minute=0)
    assert client.post("/v1/jobs", json=JOB, headers=auth).status_code == 202
    intake = client.get("/v1/limits", headers=auth).json()["intake"]
    assert intake["disabled"] is False
    assert intake["max_queued_jobs"] == {"limit": 3, "source": "default", "used": 1}
    assert intake["max_schedules"] == {"limit": 7, "source": "tenant", "used": 0}
    assert intake["max_active_batches"] == {"limit": None, "source": "default", "used": 0}
    assert intake["requests_per_minute"] == {"limit": None, "source": "tenant", "used": None}  # unlimited for it
    assert intake["key_requests_per_minute"]["source"] == "default"
