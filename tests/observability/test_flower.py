"""Flower (the compose `monitoring` profile) runs with our Celery app: it finds the broker, queue and tasks."""

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
from tests.procs import ROOT, Proc, free_port, wait_http


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
    assert flower["command"] == ["celery", "-A", "workers.celery_app", "flower", "--port=5555"]
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"
    assert flower["ports"] == ["127.0.0.1:5555:5555"]  # Flower has no login: never published beyond loopback
    assert flower["environment"]["MMJOBS_REDIS_URL"] == compose["services"]["worker"]["environment"]["MMJOBS_REDIS_URL"]
