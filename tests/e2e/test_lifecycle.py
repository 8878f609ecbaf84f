"""A job from the REST intake through a real scheduler and Celery worker to the simulator and back,
including the failures that must not lose it: a SIGKILLed worker and a Redis that forgot its queue."""

from __future__ import annotations

import hashlib

import pytest
import redis

from tests.e2e.conftest import E2E_REDIS_URL, TERMINAL, Stack
from tests.procs import wait_until

pytestmark = pytest.mark.e2e


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def test_job_succeeds_with_the_simulators_answer_and_usage(stack: Stack) -> None:
    text = "Summarize: the quick brown fox jumps over the lazy dog."
    job_id = stack.submit(text, metadata={"doc": "fox"})
    job = stack.wait_status(job_id, TERMINAL)
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert f"SIM:{digest(text)}" in result["text"] or f"SIM: {digest(text)}" in result["text"]
    # M2.x always thinks: the thinking block is kept whole, signature included.
    thinking = [b for b in result["content"] if b["type"] == "thinking"]
    assert thinking
    assert thinking[0]["signature"]
    assert result["stop_reason"] == "end_turn"
    assert result["raw"]["id"] == result["upstream_request_id"]
    billed = stack.ledger()[result["upstream_request_id"]]
    assert job["usage"]["input_tokens"] == billed["input_tokens"] > 0
    assert job["usage"]["output_tokens"] == billed["output_tokens"] > 0
    [attempt] = job["attempts"]
    assert attempt["classification"] == "succeeded"
    assert attempt["http_status"] == 200
    assert attempt["duration_ms"] >= 150  # the simulator's 0.2 s latency


def test_openai_format_job_succeeds(stack: Stack) -> None:
    text = "Classify this ticket: printer on fire."
    r = stack.client.post(
        "/v1/jobs",
        json={
            "model": "MiniMax-M2.5",
            "format": "openai",
            "params": {"max_tokens": 200, "messages": [{"role": "user", "content": text}]},
        },
        headers=stack.auth,
    )
    job = stack.wait_status(r.json()["id"], TERMINAL)
    assert job["status"] == "succeeded", job
    assert digest(text) in job["result"]["text"]
    assert job["result"]["raw"]["object"] == "chat.completion"
    billed = stack.ledger()[job["result"]["upstream_request_id"]]
    assert job["usage"]["output_tokens"] == billed["output_tokens"]


def test_permanent_upstream_error_fails_the_job_with_its_classification(stack: Stack) -> None:
    job_id = stack.submit("bad params please [[sim:error=2013]]")
    job = stack.wait_status(job_id, TERMINAL)
    assert job["status"] == "failed"
    assert job["error"]["classification"] == "permanent"
    assert job["error"]["minimax_code"] == 2013
    assert job["error"]["http_status"] == 400
    assert job["attempts"][0]["minimax_code"] == 2013


def test_canceling_a_running_job_stops_it(stack: Stack) -> None:
    job_id = stack.submit("a long one [[sim:latency=8]]")
    stack.wait_status(job_id, {"running"})
    r = stack.client.post(f"/v1/jobs/{job_id}/cancel", headers=stack.auth)
    assert r.json()["status"] == "canceled"
    # The worker notices at its next lease renewal and closes the call; the attempt says so.
    wait_until(lambda: stack.job(job_id)["attempts"][0]["ended_at"] is not None, 6, "the attempt to end")
    job = stack.job(job_id)
    assert job["status"] == "canceled"
    assert job["attempts"][0]["classification"] == "canceled"
    assert job["result"] is None


def test_job_survives_a_worker_sigkilled_mid_call(stack: Stack) -> None:
    job_id = stack.submit("survive me [[sim:latency=4]]")
    stack.wait_status(job_id, {"running"})
    stack.worker.kill()
    stack.worker = stack.start_worker()
    job = stack.wait_status(job_id, TERMINAL, timeout=40)
    assert job["status"] == "succeeded", job
    assert [a["classification"] for a in job["attempts"]] == ["lease_expired", "succeeded"]
    assert digest("survive me [[sim:latency=4]]") in job["result"]["text"]


def test_job_survives_redis_losing_its_queue(stack: Stack) -> None:
    stack.worker.stop()  # nobody consumes: the message sits in Redis
    job_id = stack.submit("lost message")
    with stack.session_factory() as session:
        from service.models import Job

        wait_until(
            lambda: session.get(Job, job_id, populate_existing=True).dispatched_at is not None,  # type: ignore[union-attr]
            10,
            "the scheduler to publish the job",
        )
    redis.Redis.from_url(E2E_REDIS_URL).flushdb()  # what a restart without persistence does
    stack.worker = stack.start_worker()
    job = stack.wait_status(job_id, TERMINAL, timeout=30)
    assert job["status"] == "succeeded", job
    assert len(job["attempts"]) == 1
