"""Media fixtures: both file stores (a directory, and S3 on a local moto server when moto is installed)."""

from __future__ import annotations

import importlib.util
import io
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.config import SIMULATOR_API_KEY, Settings
from service.db import make_engine, make_session_factory, new_id, transaction, utcnow
from service.files.s3 import S3Storage
from service.files.service import new_file_id
from service.files.storage import DirStorage, Storage, write_all
from service.jobs.transitions import Claim
from service.models import File, Job
from service.tenants import service as tenants
from simulator import SimulatorConfig, running_simulator
from tests.db import drop_database, fresh_database
from tests.procs import Proc, free_port, wait_http
from workers.runtime import Runtime, Upstream

HAS_MOTO = importlib.util.find_spec("moto") is not None


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local S3-compatible server (moto), one per test session."""
    if not HAS_MOTO:
        pytest.skip("moto[server] is not installed (pip install -e '.[dev]')")
    port = free_port()
    proc = Proc("moto", ["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], {}, tmp_path_factory.mktemp("s3"))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/moto-api/", proc)
        yield url
    finally:
        proc.stop()


def s3_store(endpoint: str) -> S3Storage:
    store = S3Storage(
        endpoint=endpoint,
        bucket=f"mmjobs-{secrets.token_hex(4)}",
        region="us-east-1",
        access_key="test",
        secret_key="test",
        prefix="files/",
    )
    store.create_bucket()
    return store


@pytest.fixture(params=["dir", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "dir":
        return DirStorage(tmp_path / "files")
    return s3_store(request.getfixturevalue("s3_endpoint"))


# --- the worker side: a database of its own (real commits, several threads), a simulator, a runtime ----------


@dataclass
class Worker:
    """What `workers.media` and `workers.preflight` use of a Runtime, on a database of its own."""

    settings: Settings
    session_factory: sessionmaker[Session]
    http: httpx.Client
    api_key: str
    tenant_id: str
    store: DirStorage

    @property
    def runtime(self) -> Runtime:
        return cast(Runtime, self)

    @property
    def upstream(self) -> Upstream:
        """The account the calls go to: the shared one of the settings, as for a job without an account."""
        return Upstream(self.settings.minimax_base_url, self.api_key)

    def add_file(self, data: bytes, *, media_type: str, tenant_id: str | None = None) -> File:
        file_id = new_file_id()
        write_all(self.store, file_id, io.BytesIO(data))
        file = File(
            id=file_id,
            tenant_id=tenant_id or self.tenant_id,
            purpose="video_understanding" if media_type.startswith("video") else "image",
            filename="f",
            size=len(data),
            media_type=media_type,
            created_at=utcnow(),
        )
        with transaction(self.session_factory) as session:
            session.add(file)
        return file

    def file(self, file_id: str) -> File:
        with self.session_factory() as session:
            found = session.get(File, file_id)
            assert found is not None
            return found

    def add_job(self, params: dict[str, Any], *, estimated: int, model: str = "MiniMax-M3") -> Claim:
        now = utcnow()
        job = Job(
            id=new_id("job"),
            tenant_id=self.tenant_id,
            model=model,
            format="anthropic",
            status="running",
            params=params,
            estimated_input_tokens=estimated,
            expires_at=now + timedelta(hours=1),
        )
        with transaction(self.session_factory) as session:
            session.add(job)
        return claim_for(job.id, self.tenant_id, params, estimated=estimated, model=model)

    def job(self, job_id: str) -> Job:
        with self.session_factory() as session:
            found = session.get(Job, job_id)
            assert found is not None
            return found


def claim_for(
    job_id: str, tenant_id: str, params: dict[str, Any], *, fmt: str = "anthropic", estimated: int = 100,
    model: str = "MiniMax-M3",
) -> Claim:  # fmt: skip
    return Claim(
        job_id=job_id,
        number=1,
        tenant_id=tenant_id,
        model=model,
        format=fmt,
        params=params,
        max_attempts=5,
        expires_at=utcnow() + timedelta(hours=1),
        estimated_input_tokens=estimated,
    )


@pytest.fixture(scope="module")
def worker_database() -> Iterator[str]:
    name = f"mmjobs_media_{os.getpid()}"
    url = fresh_database(name)
    yield url
    drop_database(name)


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    with running_simulator(SimulatorConfig(latency="0")) as url:
        yield url


@pytest.fixture
def worker(worker_database: str, simulator_url: str, tmp_path: Path) -> Iterator[Worker]:
    engine = make_engine(worker_database)
    factory = make_session_factory(engine)
    settings = Settings(
        database_url=worker_database,
        files_dir=str(tmp_path / "files"),
        minimax_api_key=SIMULATOR_API_KEY,
        minimax_base_url=simulator_url,
    )
    with transaction(factory) as session:
        key = tenants.create_key(session, tenant_name=f"media-{secrets.token_hex(4)}").key
    with httpx.Client(timeout=30) as http:
        yield Worker(
            settings=settings,
            session_factory=factory,
            http=http,
            api_key=SIMULATOR_API_KEY,
            tenant_id=key.tenant_id,
            store=DirStorage(tmp_path / "files"),
        )
    engine.dispose()


def sim_files(simulator_url: str) -> list[dict[str, Any]]:
    r = httpx.get(simulator_url + "/v1/files/list", headers={"Authorization": f"Bearer {SIMULATOR_API_KEY}"})
    return list(r.json()["files"])
