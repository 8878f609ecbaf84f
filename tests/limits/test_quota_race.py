"""Two API processes creating for the same tenant at once cannot both pass a maximum: the second waits on the
tenant's intake lock until the first commits, then counts its job and is refused. Real processes, each with its
own connection, on a database of their own; the first holds its transaction open until the test has seen the
second waiting on the lock (so without the lock the second would count only itself and pass)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select, text

from service.api.errors import APIError
from service.config import Settings
from service.db import make_engine, make_session_factory, transaction
from service.jobs import service as jobs
from service.jobs.schemas import JobCreate
from service.limits import repository as limits_repo
from service.models import ApiKey, Job
from service.tenants import repository as tenants_repo
from service.tenants import service as tenants
from tests.conftest import TEST_REDIS_URL
from tests.db import ADMIN_DSN, database_name, drop_database, fresh_database
from tests.procs import wait_until

BODY = {"model": "MiniMax-M2.7", "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}}


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = f"mmjobs_quota_race_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    url = fresh_database(name)
    try:
        yield url
    finally:
        drop_database(name)


def create_one(url: str, key_id: str, checked: Event, release: Event | None, out: Any) -> None:
    """In its own process: create one job as `key_id`; with `release`, hold the transaction open after the check
    until told to commit."""
    settings = Settings(database_url=url, redis_url=TEST_REDIS_URL)
    engine = make_engine(url)
    try:
        with transaction(make_session_factory(engine)) as session:
            key = session.get(ApiKey, key_id)
            assert key is not None
            if release is None:
                checked.wait(30)
            try:
                jobs.create(session, key=key, body=JobCreate.model_validate(BODY), settings=settings)
            except APIError as exc:
                out.put(("refused", exc.status, exc.message))
                raise
            if release is not None:
                checked.set()
                release.wait(30)
            out.put(("created", 202, ""))
    except APIError:
        pass
    finally:
        engine.dispose()


def waiting_on_advisory_lock(url: str) -> bool:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock' "
            "AND wait_event = 'advisory'",
            (database_name(url),),
        ).fetchone()
    return bool(row and row[0])


def test_two_processes_cannot_both_pass_max_queued_jobs(database: str) -> None:
    factory = make_session_factory(make_engine(database))
    with transaction(factory) as session:
        key_id = tenants.create_key(session, tenant_name="race").key.id
        tenants_repo.set_caps(session, name="race", changes={"max_queued_jobs": 1})
    ctx = multiprocessing.get_context("spawn")
    checked, release, out = ctx.Event(), ctx.Event(), ctx.Queue()
    first = ctx.Process(target=create_one, args=(database, key_id, checked, release, out))
    second = ctx.Process(target=create_one, args=(database, key_id, checked, None, out))
    first.start()
    second.start()
    try:
        assert checked.wait(60), "the first create never passed its check"
        wait_until(lambda: waiting_on_advisory_lock(database), 30, "the second create to wait on the intake lock")
        release.set()
        results = sorted([out.get(timeout=60), out.get(timeout=60)])
    finally:
        release.set()
        first.join(30)
        second.join(30)
    created, refused = results
    assert created == ("created", 202, "")
    assert refused[0:2] == ("refused", 429)
    assert refused[2].startswith("max_queued_jobs: your tenant may have at most 1 ")
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_the_one_round_trip_count_takes_the_same_lock_as_every_other_create(database: str) -> None:
    """A job create takes the intake lock inside the function mmjobs_locked_waiting_jobs, which writes the lock's
    class id out; a batch, schedule or file create takes it with INTAKE_LOCK_CLASS. They must be the same lock, or
    a job create and a batch create of one tenant would not exclude each other."""
    factory = make_session_factory(make_engine(database))
    with transaction(factory) as session:
        tenant_id = tenants.create_key(session, tenant_name="one-lock").key.tenant_id
    with factory() as holder, factory() as other:
        assert limits_repo.locked_queued_jobs(holder, tenant_id=tenant_id) == 0  # holds the lock to its commit
        probe = text("SELECT pg_try_advisory_xact_lock(:cls, hashtext(:tenant))")
        args = {"cls": limits_repo.INTAKE_LOCK_CLASS, "tenant": tenant_id}
        assert other.scalar(probe, args) is False
        holder.rollback()
        assert other.scalar(probe, args) is True
        other.rollback()
