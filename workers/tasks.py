"""Thin Celery tasks: load by id, call a plain function (STYLE.md practice 2)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

from service.jobs.transitions import Claim
from service.observability import worker as worker_metrics
from workers import shutdown  # noqa: F401  (registers the bounded graceful shutdown)
from workers.celery_app import QUEUE, RUN_JOB, RUN_JOBS, app
from workers.execution import attempt, take
from workers.runtime import Calls, InFlight, Runtime, get_runtime

log = logging.getLogger(__name__)


@app.task(name=RUN_JOBS, ignore_result=True)
def run_jobs_task(job_ids: list[str]) -> None:
    """A message names up to MMJOBS_JOBS_PER_MESSAGE jobs (workers/scheduler.py); they are claimed together and
    each runs on a call thread of its own (workers/runtime.py `Calls`). This thread returns once they started."""
    start_jobs(job_ids, rt=get_runtime())


@app.task(name=RUN_JOB, ignore_result=True)
def run_job_task(job_id: str) -> None:
    """One job: the message of a scheduler from before messages named several (an upgrade under way), and
    operators' scripts."""
    start_jobs([job_id], rt=get_runtime())


def pass_on(job_ids: list[str]) -> None:
    app.send_task(RUN_JOBS, args=[job_ids], queue=QUEUE)


def start_jobs(
    job_ids: list[str],
    *,
    rt: Runtime,
    pass_on: Callable[[list[str]], None] = pass_on,
    wait_for_slot: float = Calls.WAIT_SECONDS,
) -> None:
    """Reserve a call slot per job (waiting up to `wait_for_slot` for the first), claim them, start their attempts.
    The jobs this process has no slot for go back to the queue as one message of their own (`pass_on`), for a
    process that has: with every process full, each receiver passes a message on once per `wait_for_slot`."""
    job_ids = [str(job_id) for job_id in dict.fromkeys(job_ids)]
    slots = rt.calls.reserve(len(job_ids), wait=wait_for_slot)
    mine, rest = job_ids[:slots], job_ids[slots:]
    if rest:
        worker_metrics.JOBS_PASSED_ON.inc(len(rest))
        log.info("no free call slot for %d of %d jobs: passed on", len(rest), len(job_ids))
        try:
            pass_on(rest)
        except Exception as exc:  # the jobs stay marked dispatched: the scheduler publishes them again
            log.warning("could not pass on %d jobs (%s); the scheduler publishes them again", len(rest), exc)
    started = 0
    try:
        with rt.gate.held():  # workers/stopping.py Gate
            taken = take(mine, rt=rt)
        for claim, handle in taken:
            try:
                rt.calls.start(partial(_attempt, claim, handle, rt))
            except RuntimeError:  # the process is exiting: no new call threads
                log.warning("job %s not started (shutting down); its lease lapses and it is handed back", claim.job_id)
                rt.unregister(claim.job_id)
                continue
            started += 1
    finally:
        rt.calls.release(len(mine) - started)


def _attempt(claim: Claim, handle: InFlight, rt: Runtime) -> None:
    with rt.gate.held():  # released while the call waits on MiniMax
        attempt(claim, handle, rt=rt)
