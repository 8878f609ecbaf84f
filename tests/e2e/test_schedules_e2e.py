"""A per-minute schedule under three real scheduler processes (one of them killed mid-way), the real clock, a
real worker and the simulator: exactly one run per minute, each job done, schedule.run.* events delivered signed.
Takes about two minutes: it waits for two minute boundaries."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.db import utcnow
from tests.e2e.conftest import Stack
from tests.e2e.test_webhooks_e2e import Receiver
from tests.procs import wait_until

pytestmark = pytest.mark.e2e

JOB: dict[str, Any] = {
    "model": "MiniMax-M2.7",
    "params": {"max_tokens": 64, "messages": [{"role": "user", "content": "tick"}]},
}


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def _runs(stack: Stack, schedule_id: str) -> list[dict[str, Any]]:
    r = stack.client.get(f"/v1/schedules/{schedule_id}/runs", params={"limit": 50}, headers=stack.auth)
    assert r.status_code == 200, r.text
    return list(reversed(r.json()["data"]))


def _sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - utcnow()).total_seconds()))


def test_three_schedulers_make_one_run_per_minute(stack: Stack, hooks: Receiver) -> None:
    others = [stack.start("scheduler", ["-m", "service.cli", "scheduler"]) for _ in range(2)]
    endpoint = stack.client.post(
        "/v1/webhook-endpoints",
        json={"url": hooks.url, "event_types": ["schedule.run.started", "schedule.run.ended"]},
        headers=stack.auth,
    )
    assert endpoint.status_code == 201, endpoint.text
    secret = endpoint.json()["secret"]
    created = stack.client.post(
        "/v1/schedules",
        json={"name": "every minute", "cron": "* * * * *", "template": {"job": JOB}, "overlap": "allow"},
        headers=stack.auth,
    )
    assert created.status_code == 201, created.text
    schedule = created.json()
    first = datetime.fromisoformat(schedule["next_run_at"])
    due = [first, first + timedelta(minutes=1)]
    assert timedelta(0) < first - utcnow() <= timedelta(minutes=1)

    _sleep_until(first + timedelta(seconds=10))
    assert [r["due_at"] for r in _runs(stack, schedule["id"])] == [_z(first)], stack.logs()
    others[0].kill()  # a scheduler dies; the others carry on
    _sleep_until(due[1] + timedelta(seconds=10))
    paused = stack.client.post(f"/v1/schedules/{schedule['id']}/pause", headers=stack.auth)
    assert paused.status_code == 200

    def all_ended() -> bool:
        return all(r["status"] == "ended" for r in _runs(stack, schedule["id"]))

    wait_until(all_ended, 30, "the runs to end")
    runs = _runs(stack, schedule["id"])
    assert [r["due_at"] for r in runs] == [_z(d) for d in due], stack.logs()
    assert {(r["trigger"], r["outcome"]) for r in runs} == {("schedule", "succeeded")}
    jobs = stack.client.get(
        "/v1/jobs", params={"metadata[schedule_id]": schedule["id"], "limit": 50}, headers=stack.auth
    ).json()["data"]
    assert sorted(j["id"] for j in jobs) == sorted(r["job_id"] for r in runs)
    assert all(p.alive() for p in [stack.scheduler, others[1]]), stack.logs()

    wait_until(lambda: len(hooks.received) >= 4, 30, "four schedule webhook deliveries")
    events = hooks.events(secret)
    for kind in ("schedule.run.started", "schedule.run.ended"):
        got = sorted(e["data"]["id"] for e in events if e["type"] == kind)
        assert got == sorted(r["id"] for r in runs), (kind, events)
    ended = [e["data"] for e in events if e["type"] == "schedule.run.ended"]
    assert {e["outcome"] for e in ended} == {"succeeded"}
    assert {e["schedule_id"] for e in ended} == {schedule["id"]}


def _z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
