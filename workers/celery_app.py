"""The Celery application. Messages carry job ids only; Postgres holds everything else (DESIGN.md decision 1).

Early acknowledgement on purpose: a worker killed mid-call loses its message, and the scheduler's lease sweep
hands the job back. That avoids the redelivery duplicates of `acks_late` and the visibility timeout.
"""

from __future__ import annotations

import threading
from types import MethodType
from typing import Any

from celery import Celery, bootsteps, signals
from celery.worker import state

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


class FetchOnlyWithRoom(bootsteps.StartStopStep):
    """A worker process fetches a message only while it has a free call slot for each message it holds.

    `worker_disable_prefetch` stops fetching once every receiver holds a message; but receivers return as soon as
    their jobs started, so a process whose call slots were all taken kept fetching, held each message a moment
    (workers/tasks.py `start_jobs`) and published it back. In the 10,000-in-flight benchmark, three full processes
    passed the last two messages between them 86 times in 32 s while the fourth, with 16 free slots, never got
    them (issue 17.3). Now a full process leaves the queue alone and only processes with room take messages.

    Kombu's Redis transport asks `can_consume` before it sends a BRPOP, and again while one is pending: a "no"
    then pauses the socket and keeps any message already popped until the answer turns "yes", a whole call
    later. So a pending BRPOP is let finish; the receiver passes its message on if no slot came free by then.

    The event loop asks again on each turn, and turns at least every RECHECK_SECONDS (a no-op timer): otherwise a
    process that stopped fetching would notice a slot came free only at its next heartbeat, seconds later."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    RECHECK_SECONDS = 0.1

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._recheck: Any = None

    def start(self, c: Any) -> None:
        from workers.runtime import current_runtime  # the scheduler imports this module without worker code

        channel = c.task_consumer.channel
        qos = channel.qos
        inner = qos.can_consume  # Celery's own (worker_disable_prefetch), when set
        size = get_settings().worker_concurrency

        def can_consume(_: Any) -> bool:
            # The runtime is built by the first message's receiver: until then every slot is free, and the
            # message in hand counts against them (a one-slot process must not fetch a second one meanwhile).
            rt = current_runtime()
            free = size if rt is None else rt.calls.free()
            if free <= len(state.reserved_requests) and not getattr(channel, "_in_poll", False):
                return False
            return bool(inner())

        qos.can_consume = MethodType(can_consume, qos)
        if self._recheck is None and c.timer is not None:
            self._recheck = c.timer.call_repeatedly(self.RECHECK_SECONDS, _nothing)

    def stop(self, c: Any) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None


def _nothing() -> None:
    pass


app = make_celery(get_settings())
app.steps["consumer"].add(FetchOnlyWithRoom)


@signals.worker_init.connect
def _small_thread_stacks(**_: Any) -> None:
    """Before the pool starts its threads: one per call in flight, thousands per process (issue 17.3)."""
    kib = get_settings().worker_thread_stack_kib
    if kib:
        threading.stack_size(kib * 1024)
