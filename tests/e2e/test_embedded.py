"""`mmjobs up` on the embedded default (SQLite, local Redis, bundled simulator), run as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.db import redis_url as test_redis_url
from tests.procs import ROOT, free_port, wait_until

pytestmark = pytest.mark.e2e


def test_mmjobs_up_runs_a_job_end_to_end_on_sqlite() -> None:
    redis_url = test_redis_url(13)
    redis.Redis.from_url(redis_url).flushdb()
    with tempfile.TemporaryDirectory(prefix="mmjobs-up-") as tmp:
        api_port, sim_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MMJOBS_", "MINIMAX_"))}
        env |= {
            "MMJOBS_DATA_DIR": tmp,
            "MMJOBS_API_PORT": str(api_port),
            "MMJOBS_SIMULATOR_PORT": str(sim_port),
            "MMJOBS_REDIS_URL": redis_url,
        }
        log = Path(tmp) / "up.log"
        with log.open("wb") as out:
            up = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "up"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(lambda: "is running" in log.read_text() or up.poll() is not None, 60, "mmjobs up")
            banner = log.read_text()
            assert up.poll() is None, banner
            assert "SIMULATED" in banner
            assert f"http://127.0.0.1:{api_port}/docs" in banner
            key = (Path(tmp) / "dev-api-key").read_text().strip()
            assert key in banner.replace("\n", "")
            assert (Path(tmp) / "mmjobs.db").exists()

            base = f"http://127.0.0.1:{api_port}"
            headers = {"Authorization": f"Bearer {key}"}
            r = httpx.post(
                f"{base}/v1/jobs",
                headers=headers,
                json={
                    "model": "MiniMax-M2.7",
                    "params": {"max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]},
                },
            )
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            seen: dict[str, str] = {}

            def done() -> bool:
                seen.update(httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers).json())
                return seen["status"] in ("succeeded", "failed")

            wait_until(done, 60, "the job to finish")
            assert seen["status"] == "succeeded", (seen, log.read_text())
            assert "SIM:" in httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers).json()["result"]["text"]
        finally:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                raise
        # Ctrl-C stops every child: nothing is left listening.
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=1)


def test_mmjobs_up_explains_an_unreachable_redis() -> None:
    with tempfile.TemporaryDirectory(prefix="mmjobs-up-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MMJOBS_", "MINIMAX_"))}
        env |= {"MMJOBS_DATA_DIR": tmp, "MMJOBS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
        out = subprocess.run(
            [sys.executable, "-m", "service.cli", "up"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1
        assert "Redis is not reachable" in out.stdout
        assert "redis-server" in out.stdout
