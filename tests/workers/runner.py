"""One worker message in the test's own process: the worker's real code path (`take`: the jobs' claim, then each
one's `attempt`, in turn) on a Runtime whose database sessions come from the test's factory, its clients closed
after."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from workers.execution import attempt, take
from workers.runtime import Runtime


def run_once(settings: Settings, session_factory: sessionmaker[Session], *job_ids: str) -> None:
    rt = Runtime(settings)
    rt.session_factory = session_factory
    try:
        for claim, handle in take(job_ids, rt=rt):
            attempt(claim, handle, rt=rt)
    finally:
        rt.upstream_clients.close()
