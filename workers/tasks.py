"""Thin Celery tasks: load by id, call a plain function (STYLE.md practice 2)."""

from __future__ import annotations

from workers import shutdown  # noqa: F401  (registers the bounded graceful shutdown)
from workers.celery_app import RUN_JOB, app
from workers.execution import run_job
from workers.runtime import get_runtime


@app.task(name=RUN_JOB, ignore_result=True)
def run_job_task(job_id: str) -> None:
    rt = get_runtime()
    with rt.gate.held():  # released while the call waits on MiniMax (workers/stopping.py Gate)
        run_job(job_id, rt=rt)
