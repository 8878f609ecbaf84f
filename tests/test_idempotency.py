"""Idempotency-Key on every POST: the first response replayed for 24 hours, 422 for another request with the same
key, 409 while the first is in flight; 20 concurrent identical requests against a real server make one job."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db import utcnow
from service.idempotency import middleware, store
from service.jobs import service as jobs_service
from service.models import Batch, IdempotencyKey, Job
from tests.conftest import make_key
from tests.schedules.live import Live, live_server

JOB: dict[str, Any] = {
    "model": "MiniMax-M2.7",
    "params": {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
}
HEADER = "Idempotency-Key"


def count(session: Session, model: type[Job] | type[Batch] | type[IdempotencyKey]) -> int:
    session.expire_all()
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def keyed(auth: dict[str, str], key: str) -> dict[str, str]:
    return {**auth, HEADER: key}


@pytest.fixture
def later(monkeypatch: pytest.MonkeyPatch) -> list[timedelta]:
    """Move the middleware's clock: append a timedelta."""
    shift = [timedelta(0)]
    monkeypatch.setattr(middleware, "clock", lambda: utcnow() + shift[-1])
    return shift


def test_the_first_response_is_replayed(client: TestClient, auth: dict[str, str], session: Session) -> None:
    first = client.post("/v1/jobs", json=JOB, headers=keyed(auth, "order-17"))
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    again = client.post("/v1/jobs", json=JOB, headers=keyed(auth, "order-17"))
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["content-type"] == "application/json"
    assert count(session, Job) == 1
    # Without a key every request is new.
    assert client.post("/v1/jobs", json=JOB, headers=auth).json()["id"] != first.json()["id"]


def test_another_request_with_the_same_key_is_refused(client: TestClient, auth: dict[str, str]) -> None:
    assert client.post("/v1/jobs", json=JOB, headers=keyed(auth, "k")).status_code == 202
    for method_path, body in [
        ("/v1/jobs", {**JOB, "priority": 5}),
        ("/v1/jobs?dry_run=true", JOB),
        ("/v1/batches", {}),
    ]:
        r = client.post(method_path, json=body, headers=keyed(auth, "k"))
        assert r.status_code == 422, r.text
        assert r.json()["error"]["type"] == "idempotency_key_reused"
        assert r.json()["error"]["field"] == HEADER


def test_keys_belong_to_a_tenant(client: TestClient, auth: dict[str, str], session: Session) -> None:
    other = {"Authorization": f"Bearer {make_key(session, 'globex')}"}
    mine = client.post("/v1/jobs", json=JOB, headers=keyed(auth, "shared")).json()
    theirs = client.post("/v1/jobs", json=JOB, headers=keyed(other, "shared")).json()
    assert mine["id"] != theirs["id"]
    assert count(session, Job) == 2


def test_in_flight_answers_409_until_its_claim_lapses(
    client: TestClient, auth: dict[str, str], api_key: str, session_factory: sessionmaker[Session],
    later: list[timedelta],
) -> None:  # fmt: skip
    claim = store.open_key(
        session_factory, secret=api_key, key="slow", path="/v1/jobs", fingerprint=None, now=utcnow(), lock_seconds=60
    )
    assert isinstance(claim, store.Claim)
    r = client.post("/v1/jobs", json=JOB, headers=keyed(auth, "slow"))
    assert r.status_code == 409
    assert r.json()["error"] == {
        "type": "idempotency_key_in_use",
        "message": "the first request with this key is still being processed; retry once it has finished",
        "field": HEADER,
    }
    assert r.headers["retry-after"] == "1"
    # Its API process died and nobody renews the claim: after the lock lapses, a retry runs.
    later.append(timedelta(seconds=61))
    assert client.post("/v1/jobs", json=JOB, headers=keyed(auth, "slow")).status_code == 202


def test_keys_expire_after_24_hours(
    client: TestClient, auth: dict[str, str], session: Session, later: list[timedelta]
) -> None:
    first = client.post("/v1/jobs", json=JOB, headers=keyed(auth, "daily")).json()
    later.append(timedelta(hours=23, minutes=59))
    assert client.post("/v1/jobs", json=JOB, headers=keyed(auth, "daily")).json()["id"] == first["id"]
    later.append(timedelta(hours=24, seconds=1))
    fresh = client.post("/v1/jobs", json={**JOB, "priority": 1}, headers=keyed(auth, "daily"))
    assert fresh.status_code == 202
    assert "idempotent-replayed" not in fresh.headers
    assert count(session, Job) == 2


def test_key_length(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post("/v1/jobs", json=JOB, headers=keyed(auth, "k" * 256))
    assert r.status_code == 422
    assert r.json()["error"]["field"] == HEADER
    assert "255" in r.json()["error"]["message"]
    assert client.post("/v1/jobs", json=JOB, headers=keyed(auth, "k" * 255)).status_code == 202


def test_client_errors_are_kept_retryable_answers_are_not(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    bad = {**JOB, "params": {**JOB["params"], "temperature": 9}}
    first = client.post("/v1/jobs", json=bad, headers=keyed(auth, "bad"))
    again = client.post("/v1/jobs", json=bad, headers=keyed(auth, "bad"))
    assert first.status_code == again.status_code == 422
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    job = client.post("/v1/jobs", json=JOB, headers=auth).json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    for _ in range(2):  # 409 (already finished) asks for no replay: each request runs
        r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=keyed(auth, "cancel"))
        assert r.status_code == 409
        assert "idempotent-replayed" not in r.headers
    assert client.post("/v1/jobs", headers=keyed({}, "no-auth"), json=JOB).status_code == 401
    keys = session.scalars(select(IdempotencyKey.key)).all()
    assert sorted(keys) == ["bad"]


def test_a_failed_first_attempt_can_be_retried(
    app: FastAPI, auth: dict[str, str], session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = jobs_service.create
    monkeypatch.setattr(jobs_service, "create", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/v1/jobs", json=JOB, headers=keyed(auth, "retry")).status_code == 500
        assert count(session, IdempotencyKey) == 0
        monkeypatch.setattr(jobs_service, "create", real)
        assert client.post("/v1/jobs", json=JOB, headers=keyed(auth, "retry")).status_code == 202
    assert count(session, Job) == 1


def test_large_streamed_bodies_are_fingerprinted_as_they_pass(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    padding = "x" * 2000
    line = {"model": "MiniMax-M2.7", "params": {"max_tokens": 8, "messages": [{"role": "user", "content": padding}]}}
    lines = [json.dumps({"custom_id": f"r{i}", **line}) for i in range(700)]  # ~1.5 MB: beyond the buffer
    body = ("\n".join(lines) + "\n").encode()
    headers = {**keyed(auth, "big"), "content-type": "application/x-ndjson"}

    def chunks(data: bytes) -> Iterator[bytes]:
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]

    first = client.post("/v1/batches", content=chunks(body), headers=headers)
    assert first.status_code == 202, first.text
    again = client.post("/v1/batches", content=chunks(body), headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    changed = body[:-2] + b" \n"
    assert client.post("/v1/batches", content=chunks(changed), headers=headers).status_code == 422
    assert count(session, Batch) == 1


def test_a_multipart_retry_with_a_new_boundary_is_the_same_request(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    def upload() -> Any:
        files = [("files", ("a.txt", io.BytesIO(b"alpha"), "text/plain"))]
        form = {"model": "MiniMax-M2.7", "prompt": "Sum up: {document}", "params": '{"max_tokens": 32}'}
        return client.post("/v1/batches/documents", data=form, files=files, headers=keyed(auth, "docs"))

    first, again = upload(), upload()
    assert first.status_code == 202, first.text
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["id"] == first.json()["id"]
    assert count(session, Batch) == 1


def test_openapi_documents_the_header_on_every_post(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    posts = {path: ops["post"] for path, ops in schema["paths"].items() if "post" in ops}
    assert {"/v1/jobs", "/v1/batches", "/v1/schedules", "/v1/schedules/{schedule_id}/trigger"} <= set(posts)
    for path, post in posts.items():
        names = [p["name"] for p in post.get("parameters", []) if p["in"] == "header"]
        assert names.count(HEADER) == 1, path
        assert "409" in post["responses"], path
    created = posts["/v1/schedules"]["responses"]["201"]
    assert "Idempotent-Replayed" in created["headers"]


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    # A short claim, renewed every 0.2 s while its request runs: a slow request must still hold its key.
    name = f"mmjobs_idem_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    with live_server(name, idempotency_lock_seconds=0.6) as server:
        yield server


def test_twenty_concurrent_identical_requests_make_one_job(live: Live) -> None:
    barrier = threading.Barrier(20)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def send() -> None:
        with httpx.Client(base_url=live.url, timeout=30) as http:
            barrier.wait(10)
            response = http.post("/v1/jobs", json=JOB, headers=keyed(live.auth, "burst"))
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=send) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(r.status_code for r in answers)
    assert len(answers) == 20
    assert set(statuses) <= {202, 409}, statuses
    created = [r.json()["id"] for r in answers if r.status_code == 202]
    assert len(set(created)) == 1
    with live.factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
    # Once the first has finished, every retry gets its answer.
    replay = httpx.post(f"{live.url}/v1/jobs", json=JOB, headers=keyed(live.auth, "burst"), timeout=30)
    assert replay.status_code == 202
    assert replay.json()["id"] == created[0]


def _stored(factory: sessionmaker[Session]) -> list[dict[str, Any]]:
    with factory() as session:
        rows = session.scalars(select(IdempotencyKey)).all()
        return [{"key": r.key, "status": r.status_code, "locked_until": r.locked_until} for r in rows]


def test_a_running_request_keeps_its_claim(live: Live) -> None:
    claim = store.open_key(
        live.factory, secret=live.key, key="held", path="/v1/jobs", fingerprint=None, now=utcnow(), lock_seconds=1
    )
    assert isinstance(claim, store.Claim)
    later = utcnow() + timedelta(minutes=5)
    store.renew(live.factory, claim, until=later)
    [row] = [r for r in _stored(live.factory) if r["key"] == "held"]
    assert isinstance(row["locked_until"], datetime)
    assert row["locked_until"] >= later - timedelta(seconds=1)
    r = httpx.post(f"{live.url}/v1/jobs", json=JOB, headers=keyed(live.auth, "held"), timeout=30)
    assert r.status_code == 409
    store.release(live.factory, claim)
    assert httpx.post(f"{live.url}/v1/jobs", json=JOB, headers=keyed(live.auth, "held"), timeout=30).status_code == 202


def test_a_slow_upload_keeps_its_key_while_it_runs(live: Live) -> None:
    line = json.dumps({"custom_id": "a", **JOB}).encode() + b"\n"
    headers = {**keyed(live.auth, "slow-upload"), "content-type": "application/x-ndjson"}

    def trickle() -> Iterator[bytes]:
        yield b"\n" * (1024 * 1024 + 1)  # past the buffer: the request runs while the rest streams in
        for _ in range(8):  # 2 s: more than three times the claim's 0.6 s
            yield b"\n"
            time.sleep(0.25)
        yield line

    first: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: first.append(
            httpx.post(f"{live.url}/v1/batches", content=trickle(), headers=headers, timeout=30)
        )
    )
    thread.start()
    time.sleep(1.2)
    during = httpx.post(f"{live.url}/v1/batches", content=line, headers=headers, timeout=30)
    thread.join(30)
    assert during.status_code == 409, during.text
    assert first[0].status_code == 202, first[0].text
    with live.factory() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 1
