"""A full worker process leaves the queue to the others (issue 17.3): real Celery workers of one call slot each.

Before, a process whose call slots were all taken kept fetching messages, held each a second and published it back:
between full processes the last messages of a run bounced for half a minute while a process with room waited."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.e2e.conftest import E2E_REDIS_URL, Stack
from tests.observability.conftest import parse, value
from tests.procs import Proc, free_port, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack() -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="mmjobs-room-") as tmp:
        s = Stack(Path(tmp))
        try:
            s.worker.stop()  # the stack's own worker has 20 slots; this test starts its own of one slot each
            yield s
        finally:
            s.close()


def one_slot_worker(stack: Stack) -> tuple[Proc, int]:
    port = free_port()
    stack.env["MMJOBS_WORKER_METRICS_PORT"] = str(port)
    worker = stack.start("worker", ["-m", "service.cli", "worker", "--concurrency", "1"])
    wait_until(lambda: b"ready" in worker.log_path.read_bytes() or not worker.alive(), 30, "the worker")
    assert worker.alive(), worker.log()
    return worker, port


def passed_on(port: int) -> float:
    metrics = parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    return value(metrics, "mmjobs_worker_jobs_passed_on_total")


def test_a_full_worker_leaves_the_message_queued_for_one_with_room(stack: Stack) -> None:
    full, full_port = one_slot_worker(stack)
    long_job = stack.submit("keep the only slot busy [[sim:latency=20]]")
    stack.wait_status(long_job, {"running"})

    waiting = stack.submit("wait for a slot")
    queue = redis.Redis.from_url(E2E_REDIS_URL)
    # The scheduler publishes the job's message; the full worker must not take it.
    wait_until(lambda: queue.llen("mmjobs") >= 1, 10, "the waiting job's message in the queue")
    for _ in range(30):  # 3 s: with the old fetching, three pass-ons
        assert stack.job(waiting)["status"] == "queued", stack.logs()
        time.sleep(0.1)
    assert passed_on(full_port) == 0, full.log()[-3000:]
    assert queue.llen("mmjobs") >= 1, "the message left the queue though no worker had room"

    # A worker with room takes it at once, while the first call still runs.
    room, room_port = one_slot_worker(stack)
    done = stack.wait_status(waiting, {"succeeded"}, timeout=15)
    assert done["status"] == "succeeded"
    assert stack.job(long_job)["status"] == "running"
    assert passed_on(full_port) == 0, stack.logs()
    assert passed_on(room_port) == 0, stack.logs()

    # Once its long call ends, the first worker has room again and fetches again.
    room.stop()
    third = stack.submit("after the long one")
    stack.wait_status(long_job, {"succeeded"}, timeout=30)
    assert stack.wait_status(third, {"succeeded"}, timeout=15)["status"] == "succeeded"
