"""Structured logs: one JSON object per line, the job's ids on every line of an attempt, no secret ever."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from celery import signals
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.config import SIMULATOR_API_KEY, Settings
from service.models import Job
from service.observability import logging as obs_logging
from service.observability import worker as worker_metrics
from simulator.config import SimulatorConfig
from simulator.server import running_simulator
from workers.execution import run_job
from workers.runtime import Runtime

Lines = Callable[[], list[dict[str, Any]]]
SECRETS = [
    "mmj_4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c",
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "sk-simulator-abcdef123456",
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlc2lnbmF0dXJl",
    "plain-password-value",
]


@contextmanager
def captured(settings: Settings) -> Iterator[Lines]:
    """Route this process's logs to a buffer for the block; yields a function returning the lines so far."""
    buffer = io.StringIO()
    handler = obs_logging.configure(settings, stream=buffer)
    try:
        yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
    finally:
        logging.getLogger().removeHandler(handler)
        obs_logging.clear()


def test_every_line_is_json_with_level_logger_time_and_bound_values(settings: Settings) -> None:
    with captured(settings) as lines:
        obs_logging.new_context(job_id="job_1", batch_id=None, tenant="ten_1", attempt=2)
        logging.getLogger("mmjobs.test").warning("stdlib %s", "formatted", extra={"model": "MiniMax-M2.7"})
        obs_logging.get_logger("mmjobs.test").info("structlog", output_tokens=12)
        [first, second] = lines()
    assert first["event"] == "stdlib formatted"
    assert first["level"] == "warning"
    assert first["logger"] == "mmjobs.test"
    assert first["model"] == "MiniMax-M2.7"
    assert first["timestamp"].endswith("Z")
    assert "message" not in first  # pytest's own handler formats the record too; that leaves nothing here
    assert second["output_tokens"] == 12
    for line in (first, second):
        assert (line["job_id"], line["tenant"], line["attempt"]) == ("job_1", "ten_1", 2)
        assert "batch_id" not in line  # None values are left out


def test_console_format_is_not_json(settings: Settings) -> None:
    buffer = io.StringIO()
    handler = obs_logging.configure(settings.model_copy(update={"log_format": "console"}), stream=buffer)
    try:
        logging.getLogger("mmjobs.test").info("readable %d", 1)
    finally:
        logging.getLogger().removeHandler(handler)
    text = buffer.getvalue()
    assert "readable 1" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_secrets_never_reach_the_output(settings: Settings) -> None:
    key, whsec, sk, jwt, password = SECRETS
    with captured(settings) as lines:
        log = logging.getLogger("mmjobs.test")
        log.info("key %s secret %s upstream %s auth Bearer %s", key, whsec, sk, jwt)
        log.info("headers", extra={"authorization": f"Bearer {key}", "password": password, "input_tokens": 7})
        obs_logging.get_logger("mmjobs.test").info(
            "nested",
            request={"headers": {"X-Api-Key": key, "content-type": "application/json"}, "urls": [f"?k={sk}"]},
            api_key=password,
            webhook_secret=password,
            minimax_api_key=password,
        )
        try:
            raise RuntimeError(f"upstream refused {jwt}")
        except RuntimeError:
            log.exception("call failed")
        output = json.dumps(lines())
        parsed = lines()
    for secret in SECRETS:
        assert secret not in output
    assert "mmj_[REDACTED]" in parsed[0]["event"]
    assert "whsec_[REDACTED]" in parsed[0]["event"]
    assert parsed[1]["authorization"] == "[REDACTED]"
    assert parsed[1]["input_tokens"] == 7  # a count named like a token is not a secret
    assert parsed[2]["request"]["headers"] == {"X-Api-Key": "[REDACTED]", "content-type": "application/json"}
    assert parsed[3]["exception"].startswith("Traceback")
    assert "RuntimeError: upstream refused [REDACTED]" in parsed[3]["exception"]


def test_new_context_forgets_the_previous_task(settings: Settings) -> None:
    """A pool thread runs one task after another: the next one must not inherit the last one's ids."""
    with captured(settings) as lines:
        obs_logging.new_context(job_id="job_1", tenant="ten_1", attempt=1)
        obs_logging.new_context(delivery_id="whd_1")
        logging.getLogger("mmjobs.test").info("webhook")
        signals.task_postrun.send(sender=None)  # what the Celery hook does after every task
        logging.getLogger("mmjobs.test").info("between tasks")
        [during, between] = lines()
    assert during["delivery_id"] == "whd_1"
    assert "job_id" not in during
    assert "delivery_id" not in between


def test_request_log_has_method_path_status_duration_and_tenant(obs_app: FastAPI, settings: Settings) -> None:
    @obs_app.get("/_test/authenticated")
    def authenticated(request: Request) -> dict[str, str]:
        request.state.tenant = "ten_test"  # what authentication records for the request log
        return {}

    with TestClient(obs_app) as client, captured(settings) as lines:
        client.get("/_test/authenticated")
        client.get("/v1/jobs", headers={"Authorization": f"Bearer {SECRETS[0]}"})
        client.get("/healthz")  # probes log at DEBUG
        requests = [line for line in lines() if line["logger"] == "mmjobs.api.access"]
    assert [(r["method"], r["path"], r["status"]) for r in requests] == [
        ("GET", "/_test/authenticated", 200),
        ("GET", "/v1/jobs", 401),
    ]
    assert requests[0]["tenant"] == "ten_test"
    assert requests[1]["tenant"] is None
    assert all(r["event"] == "request" and r["duration_ms"] >= 0 for r in requests)
    assert SECRETS[0] not in json.dumps(requests)


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_an_attempts_log_lines_carry_job_batch_tenant_and_attempt(
    obs_client: TestClient, auth: dict[str, str], settings: Settings, session: Session,
    session_factory: sessionmaker[Session], tenant_id: str, level: str,
) -> None:  # fmt: skip
    """Our one line per attempt always; the HTTP library's line per call only at DEBUG (it repeats ours), and
    then inside the attempt's context too."""
    body = {"model": "MiniMax-M2.7", "params": {"max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}}
    r = obs_client.post("/v1/batches", json={"requests": [{"custom_id": "a", **body}]}, headers=auth)
    assert r.status_code == 202, r.text
    batch_id = r.json()["id"]
    job_id = session.scalar(select(Job.id).where(Job.batch_id == batch_id))
    assert job_id is not None
    labels = {"model": "MiniMax-M2.7", "format": "anthropic", "classification": "succeeded"}
    calls_before = REGISTRY.get_sample_value("mmjobs_upstream_call_duration_seconds_count", labels) or 0

    with running_simulator(SimulatorConfig(latency=0, output_tokens=16, seed=1)) as url:
        rt = Runtime(settings.model_copy(update={"minimax_api_key": SIMULATOR_API_KEY, "minimax_base_url": url}))
        rt.session_factory = session_factory
        try:
            with captured(settings.model_copy(update={"log_level": level})) as lines:
                run_job(job_id, rt=rt)
                attempt_lines = lines()
        finally:
            rt.upstream_clients.close()

    outcome = [line for line in attempt_lines if "attempt 1: succeeded" in line["event"]]
    assert len(outcome) == 1, attempt_lines
    upstream = [line for line in attempt_lines if line["logger"] == "httpx"]
    if level == "DEBUG":
        assert upstream, attempt_lines  # the upstream call's own line, logged inside the attempt
    else:
        assert not upstream, attempt_lines
    for line in (*outcome, *upstream):
        assert line["job_id"] == job_id
        assert line["batch_id"] == batch_id
        assert line["tenant"] == tenant_id
        assert line["attempt"] == 1
    assert SIMULATOR_API_KEY not in json.dumps(attempt_lines)
    calls_after = REGISTRY.get_sample_value("mmjobs_upstream_call_duration_seconds_count", labels)
    assert calls_after == calls_before + 1
    assert REGISTRY.get_sample_value("mmjobs_worker_calls_in_flight") == 0


def test_worker_serves_its_own_metrics(settings: Settings, unused_port: int) -> None:
    assert worker_metrics.serve(settings) is None  # off by default
    on = settings.model_copy(update={"worker_metrics_port": unused_port})
    server = worker_metrics.serve(on)
    assert server is not None
    try:
        assert worker_metrics.serve(on) is None  # the port is taken: reported, not raised
        worker_metrics.observe_webhook(http_status=503, seconds=0.2)
        text = httpx.get(f"http://127.0.0.1:{unused_port}/metrics", timeout=5).text
    finally:
        server.shutdown()
        server.server_close()
    assert "mmjobs_worker_calls_in_flight" in text
    assert "# TYPE mmjobs_upstream_call_duration_seconds histogram" in text
    assert 'mmjobs_webhook_send_duration_seconds_count{outcome="http_error"}' in text
