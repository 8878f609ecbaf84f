"""Graceful worker shutdown (issue 8): on SIGTERM Celery stops taking messages and waits for the calls in flight;
this bounds the wait. After `MMJOBS_WORKER_SHUTDOWN_GRACE_SECONDS` (at once on a cold shutdown) every job still
running is handed back to the queue in one transaction and the process exits, so a deploy never waits minutes
for long generations, and their jobs do not wait for a lease to run out somewhere else."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import signals

from service.config import get_settings
from workers.runtime import current_runtime

log = logging.getLogger("mmjobs.worker")
_started = threading.Event()


def hand_back_and_exit(grace: float) -> None:
    """Sleep out the grace period, hand back what still runs, exit. Runs in its own daemon thread: if every call
    finishes first, Celery's own warm shutdown ends the process before this wakes."""
    threading.Event().wait(grace)
    rt = current_runtime()
    code = 0
    if rt is not None:
        try:
            handed = rt.hand_back_all()
            if handed:
                log.warning("shutdown: grace of %ss over, handed back %d jobs still running", grace, len(handed))
        except Exception:
            # The leases run out and the scheduler hands the jobs back instead: slower, nothing lost.
            log.exception("shutdown: could not hand back the jobs in flight; their leases will expire")
            code = 1
    logging.shutdown()
    os._exit(code)


@signals.worker_shutting_down.connect
def on_worker_shutting_down(sig: str, how: str, exitcode: int, **_: Any) -> None:
    if _started.is_set():  # a second signal (Ctrl-C twice): hand back now
        grace = 0.0
    else:
        grace = 0.0 if how == "Cold" else get_settings().worker_shutdown_grace_seconds
    _started.set()
    log.info("shutdown (%s, %s): calls in flight have %ss to finish", how, sig, grace)
    threading.Thread(target=hand_back_and_exit, args=(grace,), name="shutdown-grace", daemon=True).start()
