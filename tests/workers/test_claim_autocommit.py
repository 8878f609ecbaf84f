"""The worker's claim is one statement run in autocommit (service/db.py `one_statement`, issue 17.1): it is
durable the moment it returns, with no BEGIN or COMMIT round trip, and the pooled connection it used goes back to
running every later unit of work as one transaction."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import Settings
from service.db import make_engine, make_session_factory, one_statement, transaction
from service.jobs import transitions
from service.models import Job
from service.tenants import service as tenants
from tests.db import drop_database, fresh_database, redis_url

DATABASE = f"mmjobs_claim_autocommit_{os.getpid()}"
REQ: dict[str, Any] = {
    "model": "MiniMax-M2.7",
    "params": {"max_tokens": 50, "messages": [{"role": "user", "content": "x"}]},
}


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[str, sessionmaker[Session], TestClient, dict[str, str]]]:
    url = fresh_database(DATABASE)
    engine = make_engine(url, pool_size=1, max_overflow=0)  # one connection: every unit of work reuses it
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        key = tenants.create_key(session, tenant_name="claims")
    client = TestClient(create_app(Settings(database_url=url, redis_url=redis_url(13))))
    try:
        yield url, factory, client, {"Authorization": f"Bearer {key.secret}"}
    finally:
        client.close()
        engine.dispose()
        drop_database(DATABASE)


def status_seen_by_another_session(url: str, job_id: str) -> str:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as other:
        row = other.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return str(row[0])


def test_a_claim_is_committed_when_it_returns(world: Any) -> None:
    url, factory, client, auth = world
    job_id = client.post("/v1/jobs", json=REQ, headers=auth).json()["id"]
    with one_statement(factory) as session:
        claim = transitions.claim(session, job_id=job_id, owner="w1", lease_seconds=60)
        assert claim is not None
        # Still inside the block, nothing committed by us: another session already sees the job running.
        assert status_seen_by_another_session(url, job_id) == "running"


def test_the_connection_a_claim_used_runs_the_next_unit_of_work_as_one_transaction(world: Any) -> None:
    url, factory, client, auth = world
    job_id = client.post("/v1/jobs", json=REQ, headers=auth).json()["id"]
    with one_statement(factory) as session:
        assert transitions.claim(session, job_id=job_id, owner="w1", lease_seconds=60) is not None
    # The pool holds one connection: this is the claim's. A unit of work that fails half-way leaves nothing.
    seen_inside: list[str] = []

    def half_way() -> None:
        with transaction(factory) as session:
            session.execute(update(Job).where(Job.id == job_id).values(status="succeeded"))
            seen_inside.append(status_seen_by_another_session(url, job_id))
            raise RuntimeError("the second step failed")

    with pytest.raises(RuntimeError, match="second step"):
        half_way()
    assert seen_inside == ["running"]  # not committed statement by statement
    assert status_seen_by_another_session(url, job_id) == "running"
