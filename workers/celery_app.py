"""The Celery application. Messages carry job ids only; Postgres holds everything else (DESIGN.md decision 1).

Early acknowledgement on purpose: a worker killed mid-call loses its message, and the scheduler's lease sweep
hands the job back. That avoids the redelivery duplicates of `acks_late` and the visibility timeout.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery, signals

from service.config import Settings, get_settings

QUEUE = "mmjobs"
RUN_JOB = "mmjobs.run_job"
# A message naming several job ids (issue 17.1): the scheduler's; RUN_JOB names one.
RUN_JOBS = "mmjobs.run_jobs"


def make_celery(settings: Settings) -> Celery:
    app = Celery("mmjobs", broker=settings.redis_url, include=["workers.tasks", "workers.webhooks"])
    app.conf.update(
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        # Early acknowledgement frees the prefetch slot as a task starts, so a worker whose threads are all busy
        # would keep taking messages and hold them for a whole call while other workers idle. With this, a
        # worker takes a message only when it has a thread free for it.
        worker_disable_prefetch=True,
        worker_pool="threads",
        # Celery's threads receive messages, claim their jobs and hand each to a call thread of the process's own
        # (workers/runtime.py `Calls`, MMJOBS_WORKER_CONCURRENCY of them): a few are enough.
        worker_concurrency=settings.worker_receivers,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # Publishing must not block the scheduler for long when Redis is away: it retries next pass.
        task_publish_retry=False,
        broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 5},
        # Events for Flower (the compose `monitoring` profile), which builds its worker and task lists from them:
        # a worker announces each task's states and a heartbeat every few seconds; the scheduler announces each
        # task it sends. Over Redis they are PUBLISH messages: when no monitor subscribes they cost one command
        # each and are stored nowhere (tiny next to the seconds-long MiniMax call each task makes).
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


app = make_celery(get_settings())


@signals.worker_init.connect
def _small_thread_stacks(**_: Any) -> None:
    """Before the pool starts its threads: one per call in flight, thousands per process (issue 17.3)."""
    kib = get_settings().worker_thread_stack_kib
    if kib:
        threading.stack_size(kib * 1024)
