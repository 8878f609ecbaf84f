"""Several upstream accounts (issue 17 part 2) on the real Redis, Postgres and simulator: configuration, the
choice by weight and headroom, an account leaving the rotation on 1004/2049/1008 and coming back on a probe, a job
retried on another account, and `/v1/limits` per account."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from service import accounts, status
from service.api.app import create_app
from service.config import ModelRateLimit, Settings, UpstreamAccount
from service.db import db_now
from service.models import Job
from simulator.config import SimulatorConfig
from simulator.server import running_simulator
from workers.dispatcher import Dispatcher, permit_id
from workers.execution import run_job
from workers.limiter import RateLimiter
from workers.limiter.accounts import AccountPool
from workers.runtime import Runtime

MODEL = "MiniMax-M2.7"
REQ: dict[str, Any] = {"model": MODEL, "params": {"max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}}


def account(
    name: str, *, key: str = "sk-x", url: str = "https://api.minimax.io", weight: float = 1.0, rpm: int = 1000
) -> UpstreamAccount:
    return UpstreamAccount(
        name=name, api_key=key, base_url=url, weight=weight, rate_limits={MODEL: ModelRateLimit(rpm=rpm)}
    )


@pytest.fixture
def r(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    yield client
    client.flushdb()


def pool_of(settings: Settings, client: redis.Redis, *members: UpstreamAccount) -> AccountPool:
    return AccountPool(settings.model_copy(update={"upstream_accounts": list(members)}), client)


def grant(pool: AccountPool, n: int, *, tenant: str = "t", first: int = 0) -> list[str | None]:
    chosen = []
    for i in range(first, first + n):
        member, _ = pool.acquire(
            model=MODEL, tenant=tenant, tokens=10, tenant_limits=None, permit_id=f"j{i}:1", hold_seconds=60
        )
        chosen.append(member.name if member else None)
    return chosen


# Configuration -------------------------------------------------------------------------------------------


def test_accounts_come_from_json_or_a_file_and_bad_ones_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listing = [
        {"name": "global", "api_key": "sk-1", "base_url": "https://api.minimax.io/v1", "weight": 2},
        {"name": "china", "api_key": "sk-2", "base_url": "https://api.minimaxi.com/anthropic",
         "rate_limits": {MODEL: {"rpm": 300}}},
    ]  # fmt: skip
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps(listing))
    for value in (json.dumps(listing), str(path)):
        monkeypatch.setenv("MMJOBS_UPSTREAM_ACCOUNTS", value)
        found = Settings().accounts()
        assert [(a.name, a.base_url, a.weight) for a in found] == [
            ("global", "https://api.minimax.io", 2.0),
            ("china", "https://api.minimaxi.com", 1.0),
        ]
        assert found[1].model_limits()[MODEL][0] == 300
        assert "sk-1" not in repr(found)  # a key never reaches a log line through repr
    for bad, field in (
        ([{"name": "a", "api_key": "k"}, {"name": "a", "api_key": "k"}], "given twice"),
        ([{"name": "a", "api_key": "k", "weight": 0}], "weight"),
        ([{"name": "a", "api_key": "k", "rate_limits": {"nope": {"rpm": 1}}}], "unknown model"),
        ([{"name": "a b", "api_key": "k"}], "name"),
    ):
        monkeypatch.setenv("MMJOBS_UPSTREAM_ACCOUNTS", json.dumps(bad))
        with pytest.raises(ValidationError, match=field):
            Settings()
    monkeypatch.setenv("MMJOBS_UPSTREAM_ACCOUNTS", str(tmp_path / "missing.json"))
    with pytest.raises(ValidationError, match="not a JSON list and not a readable file"):
        Settings()


def test_without_the_setting_the_single_account_is_as_before(settings: Settings, r: redis.Redis) -> None:
    single = settings.model_copy(update={"minimax_api_key": "sk-one", "upstream_account": "main"})
    pool = AccountPool(single, r)
    assert not pool.multi
    assert [(m.name, m.account.api_key) for m in pool.members] == [("main", "sk-one")]
    assert grant(pool, 3) == ["main"] * 3
    assert r.keys(accounts.permit_key("*")) == []  # nothing recorded: the worker uses the one account


# Choice by weight and headroom -----------------------------------------------------------------------------


def test_permits_go_to_accounts_by_weight(settings: Settings, r: redis.Redis) -> None:
    pool = pool_of(settings, r, account("a", weight=3), account("b", weight=1))
    chosen = grant(pool, 400)
    assert chosen.count("a") == 300
    assert chosen.count("b") == 100
    # Each grant is recorded under its permit for the worker, and it is read back the same.
    assert pool.for_permit("j7:1").name == chosen[7]


def test_a_full_account_passes_its_turn_to_one_with_headroom(settings: Settings, r: redis.Redis) -> None:
    pool = pool_of(settings, r, account("small", weight=10, rpm=5), account("big", weight=1, rpm=100))
    chosen = grant(pool, 60)
    assert chosen.count("small") == 5  # its whole limit, never more
    assert chosen.count("big") == 55
    assert None not in chosen
    # Both full: refused with the soonest time either frees a request.
    chosen = grant(pool, 50, first=60)
    assert chosen.count("big") == 45
    assert chosen.count(None) == 5


# Leaving and coming back ----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1004, 2049, 1008])
def test_an_account_refused_by_minimax_leaves_the_rotation_with_an_event_and_a_metric(
    settings: Settings, r: redis.Redis, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    pool = pool_of(settings, r, account("a"), account("b"))
    assert pool.take_out("a", code=code, error="refused")
    assert not pool.take_out("a", code=code, error="refused again")  # one event per departure
    assert set(grant(pool, 10)) == {"b"}
    assert [rec.message for rec in caplog.records if "left the rotation" in rec.message] == [
        f"upstream account a left the rotation: MiniMax answered {code} (refused); probing it every while"
    ]
    gauge, counter = accounts.metric_families(r, ["a", "b"])
    assert {s.labels["account"]: s.value for s in gauge.samples} == {"a": 0, "b": 1}
    left = {s.labels["account"]: s.value for s in counter.samples if s.labels["to"] == "out"}
    assert left == {"a": 1, "b": 0}
    state = accounts.states(r, ["a"])["a"]
    assert (state.in_rotation, state.code, state.error) == (False, code, "refused")
    # Every account out: nothing is granted, and the dispatcher is told to look again in a while.
    pool.take_out("b", code=code, error="refused")
    member, decision = pool.acquire(
        model=MODEL, tenant="t", tokens=1, tenant_limits=None, permit_id="x:1", hold_seconds=5
    )
    assert member is None
    assert decision.reason == "no_account"
    assert 0 < decision.retry_after < 60


def test_a_probe_brings_back_an_account_that_answers_and_keeps_out_one_still_refused(
    settings: Settings, r: redis.Redis
) -> None:
    with running_simulator(SimulatorConfig(latency=0, api_keys=("sk-good",))) as url, httpx.Client() as http:
        pool = pool_of(settings, r, account("good", key="sk-good", url=url), account("bad", key="sk-bad", url=url))
        pool.take_out("good", code=1008, error="insufficient balance")
        pool.take_out("bad", code=2049, error="invalid api key")
        assert pool.probe(http) == {"bad": False, "good": True}
        assert pool.out_of_rotation(fresh=True) == {"bad"}
        assert pool.probe(http) == {}  # not due again before account_probe_seconds
        state = accounts.states(r, ["good"])["good"]
        assert (state.in_rotation, state.left, state.returned) == (True, 1, 1)


# A job on the wrong account --------------------------------------------------------------------------------


def test_a_job_whose_account_is_refused_is_retried_on_another_account_without_using_an_attempt(
    settings: Settings, session_factory: sessionmaker[Session], client: TestClient, auth: dict[str, str], r: redis.Redis
) -> None:
    refused = SimulatorConfig(latency=0, api_keys=("sk-a",), faults={"base_resp": 1.0}, base_resp_code=1004)
    with (
        running_simulator(refused) as url_a,
        running_simulator(SimulatorConfig(latency=0, api_keys=("sk-b",))) as url_b,
    ):
        members = [account("a", key="sk-a", url=url_a, weight=100), account("b", key="sk-b", url=url_b)]
        multi = settings.model_copy(update={"upstream_accounts": members, "scheduler_interval": 0.1})
        rt = Runtime(multi)
        rt.session_factory = session_factory
        try:
            published: list[str] = []
            dispatcher = Dispatcher(multi, RateLimiter(r, window_seconds=61), published.append)
            job_id = client.post("/v1/jobs", json={**REQ, "max_attempts": 1}, headers=auth).json()["id"]

            def dispatch_and_run() -> None:
                with session_factory() as s:
                    now = db_now(s)
                dispatcher.run(session_factory, now=now)
                assert published[-1:] == [job_id]
                run_job(published.pop(), rt=rt)

            dispatch_and_run()  # on `a` (by weight): MiniMax says 1004
            assert accounts.chosen(r, permit_id(job_id, 1)) == "a"
            assert rt.account_pool.out_of_rotation(fresh=True) == {"a"}
            job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
            assert job["status"] in ("retrying", "queued"), job
            dispatch_and_run()  # on `b`
            assert accounts.chosen(r, permit_id(job_id, 2)) == "b"
        finally:
            rt.upstream_clients.close()
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded", job
    first, second = job["attempts"]
    assert (first["classification"], first["minimax_code"]) == ("retryable", 1004)
    assert second["classification"] == "succeeded"
    with session_factory() as s:
        row = s.get(Job, job_id)
        assert row is not None
        assert row.max_attempts == 2  # the account's fault did not use up the one attempt


# /v1/limits -------------------------------------------------------------------------------------------------


def test_limits_show_each_account_state_and_headroom_but_never_a_key(
    settings: Settings, session_factory: sessionmaker[Session], auth: dict[str, str], r: redis.Redis
) -> None:
    members = [account("global", key="sk-secret-1", rpm=300, weight=2), account("china", key="sk-secret-2",
               url="https://api.minimaxi.com", rpm=300)]  # fmt: skip
    multi = settings.model_copy(update={"upstream_accounts": members})
    pool = AccountPool(multi, r)
    assert grant(pool, 3).count("global") == 2
    pool.take_out("china", code=2049, error="invalid api key")
    status.publish(r, {"at": "now", "models": {}, "tenants": {}, "accounts": pool.snapshots()})
    app = create_app(multi)
    app.state.session_factory = session_factory
    with TestClient(app) as c:
        response = c.get("/v1/limits", headers=auth)
    assert response.status_code == 200, response.text
    assert "sk-secret" not in response.text
    shown = {a["name"]: a for a in response.json()["accounts"]}
    assert (shown["global"]["in_rotation"], shown["global"]["weight"]) == (True, 2.0)
    assert shown["china"]["in_rotation"] is False
    assert shown["china"]["last_error"] == {"code": 2049, "message": "invalid api key"}
    assert shown["china"]["base_url"] == "https://api.minimaxi.com"
    m = {x["model"]: x for x in shown["global"]["models"]}[MODEL]
    assert m["configured"]["rpm"] == 300
    assert m["used"]["requests"] == 2
    assert m["headroom"]["requests"] == 298


def _race_take_out(url: str, barrier: Any) -> bool:
    client = redis.Redis.from_url(url)
    barrier.wait()
    return accounts.take_out(client, "raced", code=2049, error="invalid api key")


def test_processes_racing_to_take_an_account_out_count_one_departure(settings: Settings, r: redis.Redis) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(6)
        with ctx.Pool(6) as pool:
            results = pool.starmap(_race_take_out, [(settings.redis_url, barrier)] * 6)
    assert results.count(True) == 1
    assert accounts.states(r, ["raced"])["raced"].left == 1
