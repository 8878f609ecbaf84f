"""One worker attempt in the test's own process: the worker's real code path (`run_job`) on a Runtime whose
database sessions come from the test's factory, its clients closed after."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from workers.execution import run_job
from workers.runtime import Runtime


def run_once(settings: Settings, session_factory: sessionmaker[Session], job_id: str) -> None:
    rt = Runtime(settings)
    rt.session_factory = session_factory
    try:
        run_job(job_id, rt=rt)
    finally:
        rt.upstream_clients.close()
