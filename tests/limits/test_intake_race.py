"""Two API processes spending the same key's quota at once admit exactly the quota between them: the GCRA step is
one atomic Lua call, so no check-then-set race between processes. Real processes, each with its own Redis
connection, started together by a barrier."""

from __future__ import annotations

import multiprocessing
import uuid
from multiprocessing.synchronize import Barrier
from typing import Any

import redis

from service.limits import intake
from tests.conftest import TEST_REDIS_URL

TRIES = 40


def spend(key: str, barrier: Barrier, out: Any) -> None:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    # One request a minute, 600 s of burst: a quota of 10 that does not refill while the test runs.
    rate = intake.Rate(policy="key", key=key, per_minute=1, burst_seconds=600)
    barrier.wait(30)
    out.put(sum(intake.take(client, [rate]).allowed for _ in range(TRIES)))


def test_two_processes_share_one_quota_exactly() -> None:
    key = f"mmjobs:intake:key:race-{uuid.uuid4().hex}"
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=spend, args=(key, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    admitted = [out.get(timeout=60), out.get(timeout=60)]
    for p in procs:
        p.join(30)
    assert sum(admitted) == 10, admitted
    redis.Redis.from_url(TEST_REDIS_URL).delete(key)
