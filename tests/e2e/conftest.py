"""The whole stack as separate processes: simulator, scheduler and Celery workers on a database of their own.

The API runs in-process (TestClient) but commits for real, like every other part here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import SIMULATOR_API_KEY, Settings
from service.db import make_engine, make_session_factory, transaction
from service.tenants import service as tenants
from tests.db import drop_database, fresh_database, redis_url
from tests.procs import Proc, free_port, wait_http, wait_until

# Per test process, so two runs side by side (a developer and a helper) never share a queue or a database.
E2E_REDIS_URL = redis_url(1 + os.getpid() % 8)
E2E_DATABASE = f"mmjobs_e2e_{os.getpid()}"
TERMINAL = {"succeeded", "failed", "canceled", "expired"}


class Stack:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.database_url = fresh_database(E2E_DATABASE)
        redis.Redis.from_url(E2E_REDIS_URL).flushdb()
        self.sim_url = f"http://127.0.0.1:{free_port()}"
        self.env = {
            "MMJOBS_DATABASE_URL": self.database_url,
            "MMJOBS_REDIS_URL": E2E_REDIS_URL,
            "MINIMAX_API_KEY": SIMULATOR_API_KEY,
            "MINIMAX_BASE_URL": self.sim_url,
            # Short leases and redispatch so crash recovery is observable in seconds.
            "MMJOBS_LEASE_SECONDS": "3",
            "MMJOBS_LEASE_REFRESH_SECONDS": "0.5",
            "MMJOBS_REDISPATCH_AFTER_SECONDS": "3",
            "MMJOBS_SCHEDULER_INTERVAL": "0.2",
            "MMJOBS_RETRY_BASE_SECONDS": "0.2",
            "MMJOBS_WEBHOOK_ALLOW_LOOPBACK": "true",
            "MMJOBS_LOG_LEVEL": "INFO",
        }
        self.procs: list[Proc] = []
        try:
            self._start()
        except BaseException:
            for proc in reversed(self.procs):
                proc.stop()
            drop_database(E2E_DATABASE)
            raise

    def _start(self) -> None:
        port = self.sim_url.rsplit(":", 1)[1]
        self.simulator = self.start("simulator", ["-m", "service.cli", "simulator", "--port", port, "--latency", "0.2"])
        wait_http(self.sim_url + "/healthz", self.simulator)
        self.scheduler = self.start("scheduler", ["-m", "service.cli", "scheduler"])
        self.worker = self.start_worker()
        self.settings = Settings(database_url=self.database_url, redis_url=E2E_REDIS_URL, webhook_allow_loopback=True)
        self.session_factory: sessionmaker[Session] = make_session_factory(make_engine(self.database_url))
        with transaction(self.session_factory) as session:
            self.api_key = tenants.create_key(session, tenant_name="e2e").secret
        self.client = TestClient(create_app(self.settings))
        self.auth = {"Authorization": f"Bearer {self.api_key}"}

    def start(self, name: str, argv: list[str]) -> Proc:
        proc = Proc(f"{name}-{len(self.procs)}", argv, self.env, self.log_dir)
        self.procs.append(proc)
        return proc

    def start_worker(self) -> Proc:
        worker = self.start("worker", ["-m", "service.cli", "worker", "--concurrency", "20"])
        wait_until(lambda: b"ready" in worker.log_path.read_bytes() or not worker.alive(), 30, "the worker")
        assert worker.alive(), worker.log()
        return worker

    def submit(self, text: str, **extra: Any) -> str:
        body: dict[str, Any] = {
            "model": "MiniMax-M2.7",
            "params": {"max_tokens": 300, "messages": [{"role": "user", "content": text}]},
        }
        body.update(extra)
        r = self.client.post("/v1/jobs", json=body, headers=self.auth)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.client.get(f"/v1/jobs/{job_id}", headers=self.auth)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def reached() -> bool:
            seen.update(self.job(job_id))
            return seen["status"] in statuses

        try:
            wait_until(reached, timeout, f"job {job_id} to reach {statuses}", interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen {seen.get('status')}\n{self.logs()}") from None
        return seen

    def ledger(self) -> dict[str, dict[str, Any]]:
        entries = httpx.get(self.sim_url + "/_sim/ledger", timeout=5).json()["entries"]
        return {e["request_id"]: e for e in entries}

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-4000:]}" for p in self.procs)

    def close(self) -> None:
        self.client.close()
        for proc in reversed(self.procs):
            proc.stop()
        drop_database(E2E_DATABASE)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="mmjobs-e2e-") as tmp:
        s = Stack(Path(tmp))
        try:
            yield s
        finally:
            s.close()
