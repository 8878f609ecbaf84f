"""A worker process receives a message naming several jobs (workers/tasks.py `start_jobs`, issue 17.1): it takes as
many as it has call slots free (MMJOBS_WORKER_CONCURRENCY), claims them in one statement and runs each on a call
thread of its own; the rest go back to the queue as a message of their own. With every slot taken it waits a moment
for one, then passes the whole message on. Real Postgres, real Redis, the simulator as MiniMax."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import SIMULATOR_API_KEY, Settings
from service.db import make_engine, make_session_factory, transaction
from service.models import Job, JobAttempt, UsageEntry
from service.tenants import service as tenants
from simulator.config import SimulatorConfig
from simulator.server import running_simulator
from tests.db import drop_database, fresh_database, redis_url
from workers import stopping
from workers.execution import attempt, take
from workers.runtime import Runtime
from workers.tasks import start_jobs

DATABASE = f"mmjobs_receiver_{os.getpid()}"
LATENCY = 1.5


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[sessionmaker[Session], TestClient, dict[str, str], str]]:
    url = fresh_database(DATABASE)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        key = tenants.create_key(session, tenant_name="receiver")
    client = TestClient(create_app(Settings(database_url=url, redis_url=redis_url(13))))
    try:
        yield factory, client, {"Authorization": f"Bearer {key.secret}"}, url
    finally:
        client.close()
        engine.dispose()
        drop_database(DATABASE)


@pytest.fixture
def runtime(world: Any) -> Iterator[Runtime]:
    factory, _, _, url = world
    with running_simulator(SimulatorConfig(latency=LATENCY, output_tokens=8, seed=1)) as sim:
        rt = Runtime(Settings(database_url=url, redis_url=redis_url(13), minimax_api_key=SIMULATOR_API_KEY,
                              minimax_base_url=sim, worker_concurrency=2))  # fmt: skip
        rt.session_factory = factory
        try:
            yield rt
        finally:
            rt.upstream_clients.close()


def submit(world: Any, n: int) -> list[str]:
    _, client, auth, _ = world
    body = {"model": "MiniMax-M2.7", "params": {"max_tokens": 20, "messages": [{"role": "user", "content": "x"}]}}
    return [client.post("/v1/jobs", json=body, headers=auth).json()["id"] for _ in range(n)]


def statuses(world: Any, ids: list[str]) -> list[str]:
    factory = world[0]
    with factory() as session:
        return [session.get_one(Job, job_id, populate_existing=True).status for job_id in ids]


def wait_for(condition: Any, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def passed_on() -> float:
    """The worker metric an operator reads to see jobs handed on for want of a call slot."""
    return REGISTRY.get_sample_value("mmjobs_worker_jobs_passed_on_total") or 0.0


def test_a_message_larger_than_the_free_slots_passes_the_rest_on(world: Any, runtime: Runtime) -> None:
    ids = submit(world, 5)
    passed: list[list[str]] = []
    counted = passed_on()
    started = time.monotonic()
    start_jobs(ids, rt=runtime, pass_on=passed.append)
    assert time.monotonic() - started < LATENCY  # the receiver returns once the calls started, not when they end
    assert passed == [ids[2:]]  # one message, in the order given
    assert passed_on() - counted == 3  # on the worker's metrics port: mmjobs_worker_jobs_passed_on_total
    assert runtime.calls.busy() == 2
    assert statuses(world, ids) == ["running", "running", "queued", "queued", "queued"]
    wait_for(lambda: statuses(world, ids[:2]) == ["succeeded", "succeeded"] and runtime.calls.busy() == 0)


def test_with_every_slot_taken_the_receiver_waits_for_one_before_it_claims(world: Any, runtime: Runtime) -> None:
    first, later = submit(world, 2), submit(world, 1)
    start_jobs(first, rt=runtime, pass_on=lambda rest: pytest.fail(f"passed on {rest}"))
    receiver = threading.Thread(
        target=start_jobs,
        args=(later,),
        kwargs={"rt": runtime, "wait_for_slot": 60.0, "pass_on": lambda rest: pytest.fail(f"passed on {rest}")},
    )
    receiver.start()
    time.sleep(LATENCY / 2)
    assert receiver.is_alive()  # waiting for a slot
    assert statuses(world, later) == ["queued"]  # and it has claimed nothing meanwhile
    receiver.join(timeout=20)
    assert not receiver.is_alive()
    wait_for(lambda: statuses(world, [*first, *later]) == ["succeeded"] * 3 and runtime.calls.busy() == 0)


def test_a_full_process_passes_a_message_on_instead_of_sitting_on_it(world: Any, runtime: Runtime) -> None:
    """No slot comes free within the wait: the whole message goes back to the queue for another process (a full
    process holding messages would keep their jobs from one that is idle, for as long as its calls run)."""
    first, later = submit(world, 2), submit(world, 3)
    start_jobs(first, rt=runtime)
    passed: list[list[str]] = []
    counted = passed_on()
    started = time.monotonic()
    start_jobs(later, rt=runtime, pass_on=passed.append, wait_for_slot=0.3)
    assert 0.3 <= time.monotonic() - started < LATENCY
    assert passed == [later]
    assert passed_on() - counted == 3
    assert statuses(world, later) == ["queued"] * 3
    wait_for(lambda: statuses(world, first) == ["succeeded"] * 2 and runtime.calls.busy() == 0)


def test_a_job_that_cannot_be_claimed_gives_its_slot_back(world: Any, runtime: Runtime) -> None:
    [done] = submit(world, 1)
    start_jobs([done], rt=runtime)
    wait_for(lambda: statuses(world, [done]) == ["succeeded"] and runtime.calls.busy() == 0)
    start_jobs([done, done], rt=runtime)  # finished already, and named twice
    assert runtime.calls.busy() == 0
    assert statuses(world, [done]) == ["succeeded"]


def run_stopped(world: Any, answer: Any, *, stop_before_the_call: bool) -> str:
    """One job claimed and run on a Runtime whose MiniMax is `answer` (an httpx handler given the request and the
    call's stop signal); stopped before its call began, or by `answer` itself. Returns the job id."""
    factory, _, _, url = world
    [job_id] = submit(world, 1)
    rt = Runtime(Settings(database_url=url, redis_url=redis_url(13), minimax_api_key="sk-test"))
    rt.session_factory = factory
    rt.upstream_clients.close()
    try:
        [(claim, handle)] = take([job_id], rt=rt)
        transport = httpx.MockTransport(lambda request: answer(request, handle.aborted))
        rt.upstream_clients.clients = [httpx.Client(transport=transport)]
        if stop_before_the_call:
            handle.aborted.stop(stopping.CANCELED)  # the cancel's stop notice, before the call thread got to it
        with rt.gate.held():
            attempt(claim, handle, rt=rt)
    finally:
        rt.upstream_clients.close()
    return job_id


def billing(world: Any, job_id: str) -> tuple[int, str | None, int]:
    factory = world[0]
    with factory() as session:
        rows = session.scalar(select(func.count()).select_from(UsageEntry).where(UsageEntry.job_id == job_id))
        tried = session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id)).one()
    return int(rows or 0), tried.classification, tried.input_tokens


def test_a_call_stopped_before_it_began_is_not_sent_nor_billed(world: Any) -> None:
    """Claimed with others, canceled before its call thread got to it: the request never goes out (the torture
    test found such jobs billed for their input)."""
    sent: list[httpx.Request] = []
    job_id = run_stopped(world, lambda request, _stop: sent.append(request), stop_before_the_call=True)
    assert sent == []
    assert billing(world, job_id) == (0, "canceled", 0)


def test_a_call_refused_by_minimax_while_it_was_being_stopped_is_not_billed(world: Any) -> None:
    """The cancel comes while MiniMax handles the request, which it then refuses (500, no usage): nothing was
    generated, so nothing is billed, as for a refusal without a cancel."""

    def refuse(_request: httpx.Request, stop: stopping.StopSignal) -> httpx.Response:
        stop.stop(stopping.CANCELED)
        return httpx.Response(500, json={"type": "error", "error": {"type": "api_error", "message": "internal"}})

    job_id = run_stopped(world, refuse, stop_before_the_call=False)
    assert billing(world, job_id) == (0, "canceled", 0)
