"""A tenant's own MiniMax key (issue 17 part 2) on the real Postgres, Redis and simulator: stored encrypted (the raw
column read back), never shown, refused without MMJOBS_SECRET_KEY or with bad fields (400 naming the field), used
only for that tenant's jobs, and its account shown to that tenant alone in /v1/limits."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from cryptography.fernet import Fernet
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from service import accounts, status
from service.api.app import create_app
from service.config import Settings
from service.db import db_now
from simulator.config import SimulatorConfig
from simulator.server import running_simulator
from tests.conftest import make_key
from tests.workers.runner import run_once
from workers.dispatcher import Dispatcher
from workers.execution import run_job
from workers.limiter import RateLimiter
from workers.runtime import Runtime

MODEL = "MiniMax-M2.7"
REQ: dict[str, Any] = {"model": MODEL, "params": {"max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}}
OWN_KEY = "sk-own-acme-7f3q"
SHARED_KEY = "sk-shared-1111"
SECRET = Fernet.generate_key().decode()


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with running_simulator(SimulatorConfig(latency=0, api_keys=(SHARED_KEY, OWN_KEY))) as url:
        yield url


@pytest.fixture
def keyed(settings: Settings, sim: str) -> Settings:
    return settings.model_copy(update={"secret_key": SECRET, "minimax_api_key": SHARED_KEY, "minimax_base_url": sim})


def app_for(settings: Settings, session_factory: sessionmaker[Session]) -> FastAPI:
    app = create_app(settings)
    app.state.session_factory = session_factory
    return app


def test_without_a_secret_no_key_is_stored(
    settings: Settings, session_factory: sessionmaker[Session], auth: dict[str, str]
) -> None:
    with TestClient(app_for(settings, session_factory)) as c:
        r = c.put("/v1/limits/upstream-key", json={"api_key": OWN_KEY}, headers=auth)
    assert r.status_code == 403
    assert "MMJOBS_SECRET_KEY" in r.json()["error"]["message"]
    with session_factory() as s:
        assert s.execute(text("SELECT count(*) FROM tenant_upstream_keys")).scalar() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"api_key": ""}, "api_key"),
        ({"api_key": "has spaces in it"}, "api_key"),
        ({"api_key": 12345678}, "api_key"),
        ({"api_key": OWN_KEY, "base_url": "https://evil.example.com"}, "base_url"),
        ({"api_key": OWN_KEY, "base_url": "not a url"}, "base_url"),
        ({"api_key": OWN_KEY, "rate_limits": {"nope": {"rpm": 1}}}, "rate_limits"),
        ({"api_key": OWN_KEY, "rate_limits": {MODEL: {"rpm": -1}}}, "rate_limits"),
        ({"api_key": OWN_KEY, "rate_limits": {MODEL: {"rpm": 10**30}}}, "rate_limits"),
        ({"api_key": OWN_KEY, "extra": 1}, "extra"),
    ],
)
def test_bad_fields_get_a_4xx_naming_them(
    keyed: Settings, session_factory: sessionmaker[Session], auth: dict[str, str], body: dict[str, Any], field: str
) -> None:
    with TestClient(app_for(keyed, session_factory)) as c:
        r = c.put("/v1/limits/upstream-key", json=body, headers=auth)
    assert 400 <= r.status_code < 500, r.text
    assert field in (r.json()["error"].get("field") or "") + r.json()["error"]["message"]


def test_the_key_is_stored_encrypted_and_used_only_for_its_tenants_jobs(
    keyed: Settings, session_factory: sessionmaker[Session], session: Session, sim: str
) -> None:
    r_client = redis.Redis.from_url(keyed.redis_url)
    r_client.flushdb()
    acme = {"Authorization": f"Bearer {make_key(session, 'acme-own')}"}
    beta = {"Authorization": f"Bearer {make_key(session, 'beta-shared')}"}
    app = app_for(keyed, session_factory)
    with TestClient(app) as c:
        body = {"api_key": OWN_KEY, "base_url": sim, "rate_limits": {MODEL: {"rpm": 60}}}
        r = c.put("/v1/limits/upstream-key", json=body, headers=acme)
        assert r.status_code == 200, r.text
        assert OWN_KEY not in r.text
        assert r.json()["fingerprint"] == "..." + OWN_KEY[-4:]
        # At rest: ciphertext only, which the secret opens.
        with session_factory() as s:
            raw = s.execute(text("SELECT encrypted_key FROM tenant_upstream_keys")).scalar_one()
        assert OWN_KEY.encode() not in bytes(raw)
        assert Fernet(SECRET.encode()).decrypt(bytes(raw)).decode() == OWN_KEY

        jobs = {
            "acme": c.post("/v1/jobs", json=REQ, headers=acme).json()["id"],
            "beta": c.post("/v1/jobs", json=REQ, headers=beta).json()["id"],
        }
        rt = Runtime(keyed)
        rt.session_factory = session_factory
        try:
            published: list[str] = []
            dispatcher = Dispatcher(keyed, RateLimiter(r_client, window_seconds=61), published.append)
            with session_factory() as s:
                now = db_now(s)
            dispatcher.run(session_factory, now=now)
            assert sorted(published) == sorted(jobs.values())
            for job_id in published:
                run_job(job_id, rt=rt)
            status.publish(
                r_client,
                {"at": "now", "models": {}, "tenants": {}, "tenant_accounts": dispatcher.pool.tenant_snapshots()},
            )
        finally:
            rt.upstream_clients.close()
        for who, job_id in jobs.items():
            job = c.get(f"/v1/jobs/{job_id}", headers=acme if who == "acme" else beta).json()
            assert job["status"] == "succeeded", job
            # The attempt names the account it ran on: acme's own key; beta's the single configured key (null).
            assert [a["account"] for a in job["attempts"]] == ["own_key" if who == "acme" else None]
        by_account = c.get("/v1/usage", params={"group_by": "account"}, headers=acme).json()["data"]
        assert [(row["key"], row["attempts"]) for row in by_account] == [("own_key", 1)]
        ledger = c.get("/v1/limits", headers=acme)
        mine, theirs = ledger.json(), c.get("/v1/limits", headers=beta).json()
    entries = httpx.get(sim + "/_sim/ledger").json()["entries"]
    by_key = sorted(e["api_key_suffix"] for e in entries[-2:])
    assert by_key == sorted([OWN_KEY[-4:], SHARED_KEY[-4:]])  # one call on each key: acme's on its own
    own = mine["own_account"]
    assert own["fingerprint"] == "..." + OWN_KEY[-4:]
    m = {x["model"]: x for x in own["models"]}[MODEL]
    assert m["configured"]["rpm"] == 60
    assert m["used"]["requests"] == 1
    assert theirs["own_account"] is None
    assert "acme" not in str(theirs)
    assert OWN_KEY[-4:] not in str(theirs)
    r_client.flushdb()


def test_a_lost_account_record_still_runs_the_tenants_job_on_its_own_key(
    keyed: Settings, session_factory: sessionmaker[Session], session: Session, sim: str
) -> None:
    """Redis restarted empty between dispatch and claim: the permit's record of the account is gone. The tenant's
    job must still go out on the tenant's own key, never on the operator's shared one."""
    r_client = redis.Redis.from_url(keyed.redis_url)
    r_client.flushdb()
    acme = {"Authorization": f"Bearer {make_key(session, 'acme-lost')}"}
    with TestClient(app_for(keyed, session_factory)) as c:
        body = {"api_key": OWN_KEY, "base_url": sim, "rate_limits": {MODEL: {"rpm": 60}}}
        assert c.put("/v1/limits/upstream-key", json=body, headers=acme).status_code == 200
        job_id = c.post("/v1/jobs", json=REQ, headers=acme).json()["id"]
        published: list[str] = []
        dispatcher = Dispatcher(keyed, RateLimiter(r_client, window_seconds=61), published.append)
        with session_factory() as s:
            now = db_now(s)
        dispatcher.run(session_factory, now=now)
        assert published == [job_id]
        r_client.flushdb()  # the records of which account each permit is on are lost
        run_once(keyed, session_factory, job_id)
        assert c.get(f"/v1/jobs/{job_id}", headers=acme).json()["status"] == "succeeded"
    last = httpx.get(sim + "/_sim/ledger").json()["entries"][-1]
    assert last["api_key_suffix"] == OWN_KEY[-4:]
    r_client.flushdb()


def _dispatch(settings: Settings, session_factory: sessionmaker[Session], r_client: redis.Redis) -> Any:
    published: list[str] = []
    dispatcher = Dispatcher(settings, RateLimiter(r_client, window_seconds=61), published.append)
    with session_factory() as s:
        now = db_now(s)
    report = dispatcher.run(session_factory, now=now)
    report.published = published
    return report


_run = run_once


def _calls(sim: str) -> list[str]:
    return [e["api_key_suffix"] for e in httpx.get(sim + "/_sim/ledger").json()["entries"]]


def test_the_dispatcher_never_decrypts_a_tenants_key(
    keyed: Settings,
    session_factory: sessionmaker[Session],
    session: Session,
    sim: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DESIGN.md decision 10: the scheduler runs with no MMJOBS_SECRET_KEY at all, reads only what is stored in
    clear, and still sends the tenant's job to its own account; the worker decrypts and calls with it."""
    r_client = redis.Redis.from_url(keyed.redis_url)
    r_client.flushdb()
    acme = {"Authorization": f"Bearer {make_key(session, 'acme-nosecret')}"}
    with TestClient(app_for(keyed, session_factory)) as c:
        body = {"api_key": OWN_KEY, "base_url": sim, "rate_limits": {MODEL: {"rpm": 60}}}
        assert c.put("/v1/limits/upstream-key", json=body, headers=acme).status_code == 200
        job_id = c.post("/v1/jobs", json=REQ, headers=acme).json()["id"]
        scheduler_settings = keyed.model_copy(update={"secret_key": None})

        def no_decrypting(*args: Any, **kwargs: Any) -> bytes:
            raise AssertionError("the scheduler decrypted a tenant's key")

        with monkeypatch.context() as m:
            m.setattr(Fernet, "decrypt", no_decrypting)
            report = _dispatch(scheduler_settings, session_factory, r_client)
        assert report.published == [job_id], report.waits
        assert (
            r_client.get(f"mmjobs:acct:permit:{job_id}:1") == f"tenant.{_tenant_of(session_factory, job_id)}".encode()
        )
        _run(keyed, session_factory, job_id)
        assert c.get(f"/v1/jobs/{job_id}", headers=acme).json()["status"] == "succeeded"
    assert _calls(sim)[-1] == OWN_KEY[-4:]
    r_client.flushdb()


def _tenant_of(session_factory: sessionmaker[Session], job_id: str) -> str:
    with session_factory() as s:
        return str(s.execute(text("SELECT tenant_id FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one())


def _attempts(session_factory: sessionmaker[Session], job_id: str) -> tuple[int, int]:
    with session_factory() as s:
        row = s.execute(text("SELECT attempt_count, max_attempts FROM jobs WHERE id = :id"), {"id": job_id}).one()
    return int(row[0]), int(row[1])


def test_a_key_the_worker_cannot_decrypt_hands_the_job_back_and_holds_the_tenant(
    keyed: Settings,
    session_factory: sessionmaker[Session],
    session: Session,
    sim: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's MMJOBS_SECRET_KEY is not the one the key was stored under: the job is handed back waiting (the
    attempt not counted) with the reason on it, nothing goes out on any key, and the dispatcher holds the tenant's
    jobs with a `tenant_key` wait (another tenant's jobs on the same model still go). Once the probe is due and the
    worker has the right secret, the job runs on the tenant's own key and the hold is lifted."""
    from service.accounts import tenant_keys

    monkeypatch.setattr(accounts, "UNDECRYPTABLE_PROBE_SECONDS", 2.0)
    r_client = redis.Redis.from_url(keyed.redis_url)
    r_client.flushdb()
    acme = {"Authorization": f"Bearer {make_key(session, 'acme-badsecret')}"}
    beta = {"Authorization": f"Bearer {make_key(session, 'beta-badsecret')}"}
    wrong = keyed.model_copy(update={"secret_key": tenant_keys.generate_secret()})
    scheduler_settings = keyed.model_copy(update={"secret_key": None})
    with TestClient(app_for(keyed, session_factory)) as c:
        body = {"api_key": OWN_KEY, "base_url": sim, "rate_limits": {MODEL: {"rpm": 60}}}
        assert c.put("/v1/limits/upstream-key", json=body, headers=acme).status_code == 200
        job_id = c.post("/v1/jobs", json=REQ, headers=acme).json()["id"]
        calls_before = len(_calls(sim))

        assert _dispatch(scheduler_settings, session_factory, r_client).published == [job_id]
        _run(wrong, session_factory, job_id)
        assert len(_calls(sim)) == calls_before  # nothing went out, on no key

        job = c.get(f"/v1/jobs/{job_id}", headers=acme).json()
        assert job["status"] == "retrying", job
        assert job["error"]["type"] == "tenant_key_unusable"
        assert "MMJOBS_SECRET_KEY" in job["error"]["message"]
        assert "not counted" in job["error"]["retry"]
        assert _attempts(session_factory, job_id) == (1, keyed.default_max_attempts + 1)  # the attempt not counted
        assert OWN_KEY not in str(job)

        # Held: not dispatched again while the hold lasts, and the wait says why. Another tenant still goes.
        other = c.post("/v1/jobs", json=REQ, headers=beta).json()["id"]
        report = _dispatch(scheduler_settings, session_factory, r_client)
        assert report.published == [other]
        wait = report.waits[status.group_key(_tenant_of(session_factory, job_id), MODEL)]
        assert wait["reason"] == "tenant_key"
        assert wait["limit"] == "undecryptable"
        assert "MMJOBS_SECRET_KEY" in wait["detail"]
        assert 0 < report.next_wake <= 2.0
        status.publish(r_client, {"at": "now", "waits": report.waits, "models": {}, "tenants": {}})
        shown = c.get(f"/v1/jobs/{job_id}", headers=acme).json()["waiting"]
        assert shown["reason"] == "tenant_key"
        assert "MMJOBS_SECRET_KEY" in shown["detail"]

        # The secret is fixed and the probe is due: the job runs, on the tenant's own key, and lifts the hold.
        time.sleep(2.1)
        assert _dispatch(scheduler_settings, session_factory, r_client).published == [job_id]
        _run(keyed, session_factory, job_id)
        job = c.get(f"/v1/jobs/{job_id}", headers=acme).json()
        assert job["status"] == "succeeded", job
        assert accounts.tenant_key_holds(r_client, [_tenant_of(session_factory, job_id)]) == {}
    assert _calls(sim)[calls_before:] == [OWN_KEY[-4:]]  # one call in all, on the tenant's own key
    r_client.flushdb()


def test_a_key_set_again_lifts_the_hold_at_once(
    keyed: Settings, session_factory: sessionmaker[Session], session: Session, sim: str
) -> None:
    """The hold names the version of the key found unusable: the tenant setting its key again (under the secret
    the service has now) is tried as soon as the scheduler reads the keys again, not after the hold lapses."""
    from service.accounts import tenant_keys

    r_client = redis.Redis.from_url(keyed.redis_url)
    r_client.flushdb()
    acme = {"Authorization": f"Bearer {make_key(session, 'acme-reset')}"}
    wrong = keyed.model_copy(update={"secret_key": tenant_keys.generate_secret()})
    with TestClient(app_for(keyed, session_factory)) as c:
        body = {"api_key": OWN_KEY, "base_url": sim, "rate_limits": {MODEL: {"rpm": 60}}}
        assert c.put("/v1/limits/upstream-key", json=body, headers=acme).status_code == 200
        job_id = c.post("/v1/jobs", json=REQ, headers=acme).json()["id"]
        assert _dispatch(keyed, session_factory, r_client).published == [job_id]
        _run(wrong, session_factory, job_id)
        assert _dispatch(keyed, session_factory, r_client).published == []
        assert c.put("/v1/limits/upstream-key", json=body, headers=acme).status_code == 200
        assert _dispatch(keyed, session_factory, r_client).published == [job_id]
        _run(keyed, session_factory, job_id)
        assert c.get(f"/v1/jobs/{job_id}", headers=acme).json()["status"] == "succeeded"
    r_client.flushdb()


def test_a_refused_own_key_holds_the_tenants_jobs_and_one_probes_it_back(
    keyed: Settings, session_factory: sessionmaker[Session], session: Session
) -> None:
    """MiniMax refuses the tenant's own key (1008, no balance): its jobs are handed back (not counted, never sent on
    another key) and held with a wait naming the code; every account_probe_seconds one job is let through, and once
    the key answers again the hold lifts and the rest run."""
    refusing = SimulatorConfig(
        latency=0, api_keys=(SHARED_KEY, OWN_KEY), faults={"base_resp": 1.0}, base_resp_code=1008
    )
    with running_simulator(refusing) as url:
        cfg = keyed.model_copy(update={"minimax_base_url": url, "account_probe_seconds": 1.0})
        r_client = redis.Redis.from_url(cfg.redis_url)
        r_client.flushdb()
        acme = {"Authorization": f"Bearer {make_key(session, 'acme-refused')}"}
        with TestClient(app_for(cfg, session_factory)) as c:
            body = {"api_key": OWN_KEY, "base_url": url, "rate_limits": {MODEL: {"rpm": 60}}}
            assert c.put("/v1/limits/upstream-key", json=body, headers=acme).status_code == 200
            jobs = [c.post("/v1/jobs", json=REQ, headers=acme).json()["id"] for _ in range(2)]
            assert sorted(_dispatch(cfg, session_factory, r_client).published) == sorted(jobs)
            for job_id in jobs:
                _run(cfg, session_factory, job_id)
                job = c.get(f"/v1/jobs/{job_id}", headers=acme).json()
                assert job["status"] == "retrying", job
                assert job["error"]["minimax_code"] == 1008
                assert "not counted" in job["error"]["retry"]
                assert _attempts(session_factory, job_id) == (1, cfg.default_max_attempts + 1)

            report = _dispatch(cfg, session_factory, r_client)
            assert report.published == []  # held: the first probe is not due yet
            wait = report.waits[status.group_key(_tenant_of(session_factory, jobs[0]), MODEL)]
            assert (wait["reason"], wait["limit"]) == ("tenant_key", "minimax_1008")
            assert "1008" in wait["detail"]

            # A probe while MiniMax still refuses: that one job is handed back, the hold stays.
            time.sleep(1.1)
            probe = _dispatch(cfg, session_factory, r_client).published
            assert len(probe) == 1
            _run(cfg, session_factory, probe[0])
            assert c.get(f"/v1/jobs/{probe[0]}", headers=acme).json()["status"] == "retrying"
            assert _dispatch(cfg, session_factory, r_client).published == []

            # The account is paid up: the next probe succeeds and lifts the hold; the other job goes too.
            httpx.post(url + "/_sim/config", json={"faults": {}}).raise_for_status()
            time.sleep(1.1)
            probe = _dispatch(cfg, session_factory, r_client).published
            assert len(probe) == 1
            _run(cfg, session_factory, probe[0])
            rest = _dispatch(cfg, session_factory, r_client).published
            assert sorted(probe + rest) == sorted(jobs)
            for job_id in rest:
                _run(cfg, session_factory, job_id)
            for job_id in jobs:
                assert c.get(f"/v1/jobs/{job_id}", headers=acme).json()["status"] == "succeeded"
        assert set(_calls(url)) == {OWN_KEY[-4:]}  # never the shared key
        r_client.flushdb()


def test_a_success_lifts_only_a_hold_set_before_its_call_was_sent(keyed: Settings) -> None:
    """A call sent before MiniMax refused the key may still succeed afterwards: that proves nothing about the key
    now, so it must not lift the hold; a call sent after the hold does."""
    r_client = redis.Redis.from_url(keyed.redis_url)
    r_client.flushdb()
    sent_before = time.time()
    accounts.hold_tenant_key(r_client, "t1", why="refused", code=1004, message="m", version="v", probe_every=60)
    assert not accounts.release_tenant_key(r_client, "t1", set_before=sent_before)
    assert set(accounts.tenant_key_holds(r_client, ["t1"])) == {"t1"}
    assert accounts.release_tenant_key(r_client, "t1", set_before=time.time() + 0.001)
    assert accounts.tenant_key_holds(r_client, ["t1"]) == {}
    r_client.flushdb()
