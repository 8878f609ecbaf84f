"""Flower (the compose `monitoring` profile) runs with our Celery app: it finds the broker, queue and tasks, and
lists the workers `mmjobs worker` starts and the tasks they ran (issue 16 point 6): Flower is built from events."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import TEST_REDIS_URL
from tests.db import drop_database, fresh_database
from tests.procs import ROOT, Proc, free_port, wait_http, wait_until


def test_the_celery_cli_loads_our_app() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "inspect", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(importlib.util.find_spec("flower") is None, reason="flower is not installed (extra `monitoring`)")
def test_flower_serves_our_app() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mmjobs-flower-") as tmp:
        argv = ["-m", "celery", "-A", "workers.celery_app", "flower", f"--port={port}", "--address=127.0.0.1"]
        flower = Proc("flower", argv, {"MMJOBS_REDIS_URL": TEST_REDIS_URL}, Path(tmp))
        try:
            wait_http(f"http://127.0.0.1:{port}/healthcheck", flower, timeout=60)
            assert httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=5).text == "OK"
            assert "mmjobs" in httpx.get(f"http://127.0.0.1:{port}/broker", timeout=10).text
            log = flower.log()
        finally:
            flower.stop()
    assert "mmjobs.run_job" in log, log  # Flower loaded our tasks: it imported the app, not just the broker
    assert "mmjobs.deliver_webhook" in log, log


def test_compose_monitoring_profile_runs_flower_on_our_app() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    flower = compose["services"]["flower"]
    assert flower["profiles"] == ["monitoring"]
    assert flower["command"][:5] == ["celery", "-A", "workers.celery_app", "flower", "--port=5555"]
    assert flower["environment"]["FLOWER_UNAUTHENTICATED_API"] == "true"  # /api/* on loopback, as below
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"
    assert flower["ports"] == ["127.0.0.1:5555:5555"]  # Flower has no login: never published beyond loopback
    assert flower["environment"]["MMJOBS_REDIS_URL"] == compose["services"]["worker"]["environment"]["MMJOBS_REDIS_URL"]


def test_the_worker_sends_what_flower_needs() -> None:
    from service.cli.main import _worker_argv
    from workers.celery_app import app

    argv = _worker_argv(4)
    assert "--without-heartbeat" not in argv  # heartbeats: Flower counts a worker online while they come
    assert app.conf.worker_send_task_events is True  # task-received/started/succeeded...: Flower's task list
    assert app.conf.task_send_sent_event is True  # task-sent, from the scheduler: tasks still in the queue


@pytest.mark.skipif(importlib.util.find_spec("flower") is None, reason="flower is not installed (extra `monitoring`)")
def test_flower_lists_the_worker_and_a_finished_task(tmp_path: Path) -> None:
    """`mmjobs worker` as deployed, Flower as in compose; a run_job task for a job that does not exist finishes
    at once (the claim finds nothing), and Flower's API shows it by name with the worker that ran it."""
    from service.config import Settings
    from workers.celery_app import QUEUE, RUN_JOB, make_celery

    database = "mmjobs_flower"
    env = {
        "MMJOBS_DATABASE_URL": fresh_database(database),
        "MMJOBS_REDIS_URL": TEST_REDIS_URL,
        "MINIMAX_API_KEY": "sk-simulator",
        "MINIMAX_BASE_URL": "http://127.0.0.1:9",  # never called: the job does not exist
        "FLOWER_UNAUTHENTICATED_API": "true",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = ["-m", "celery", "-A", "workers.celery_app", "flower", f"--port={port}", "--address=127.0.0.1"]
    flower = Proc("flower", argv, env, tmp_path)
    worker = Proc("worker", ["-m", "service.cli", "worker", "--concurrency", "2"], env, tmp_path)
    try:
        wait_http(base + "/healthcheck", flower, timeout=60)
        wait_until(lambda: b"ready" in worker.log_path.read_bytes() or not worker.alive(), 60, "the worker")
        assert worker.alive(), worker.log()

        def workers() -> dict[str, Any]:
            r = httpx.get(base + "/api/workers", params={"refresh": "true"}, timeout=30)
            assert r.status_code == 200, r.text
            return dict(r.json())

        wait_until(lambda: bool(workers()), 60, "Flower to list the worker")
        celery = make_celery(Settings(redis_url=TEST_REDIS_URL))
        sent = celery.send_task(RUN_JOB, args=["job_does_not_exist"], queue=QUEUE)

        def task() -> dict[str, Any]:
            r = httpx.get(base + "/api/tasks", timeout=30)
            assert r.status_code == 200, r.text
            return dict(r.json().get(sent.id) or {})

        wait_until(lambda: task().get("state") == "SUCCESS", 60, "Flower to list the finished task")
        finished = task()
        assert finished["name"] == RUN_JOB
        assert "job_does_not_exist" in finished["args"]
        assert finished["worker"] in workers()
        assert finished["runtime"] is not None
    finally:
        worker.stop()
        flower.stop()
        drop_database(database)
