"""Per-process resources shared by every task thread: settings, the database engine, the clients to MiniMax
(pools of kept-alive connections, `UpstreamClients`), the shared rate limiter, and the registry of calls in flight
whose leases a keeper thread renews."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import httpx
import redis
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings, get_settings
from service.db import engine_for, make_engine, make_session_factory, transaction
from service.dispatch import STOP_CHANNEL
from service.jobs import transitions
from service.observability import tracing
from service.observability import worker as worker_metrics
from workers.finisher import Finisher
from workers.limiter import RateLimiter
from workers.limiter.accounts import AccountPool
from workers.retry import RetryPolicy
from workers.stopping import CANCELED, LEASE_LOST, Gate, StopSignal, stoppable_transport
from workers.tenant_keys import TenantKeyRing

log = logging.getLogger(__name__)


class Upstream(NamedTuple):
    """Where every call of an attempt goes (the model call, a media upload, count_tokens): the base URL and key of
    the account its permit is on (service/accounts/, workers/execution.py `_upstream`)."""

    base_url: str
    api_key: str

    @property
    def account(self) -> str:
        """The account's fingerprint, naming it without the key: a MiniMax file id is valid only in the account
        that uploaded it (workers/media.py)."""
        return hashlib.sha256(f"{self.base_url}\n{self.api_key}".encode()).hexdigest()[:32]


# Connections one httpx pool holds at most, and how long an idle one is kept (`UpstreamClients`).
SHARD_CONNECTIONS = 32
KEEPALIVE_SECONDS = 2.0


class UpstreamClients:
    """The process's HTTP clients to MiniMax: MMJOBS_UPSTREAM_MAX_CONNECTIONS split over pools of at most
    SHARD_CONNECTIONS, each thread keeping to one (assigned in turn on its first call).

    One pool for thousands of call threads cost time quadratic in their number: httpcore's pool walks every
    connection it holds for each request it assigns and each response it closes, under its lock (measured: 2,500
    calls in flight per worker, half of the worker's CPU in `ConnectionPool._assign_requests_to_connections` while
    they ramp up, issue 17.3). Small pools keep each walk short; one SSL context is shared (loading the CA store
    per pool would cost a few MiB and milliseconds each)."""

    def __init__(self, settings: Settings) -> None:
        total = settings.upstream_max_connections
        shards = max(1, -(-total // SHARD_CONNECTIONS))
        verify = httpx.create_ssl_context()
        timeout = httpx.Timeout(settings.upstream_read_timeout, connect=settings.upstream_connect_timeout)
        self.clients = []
        for i in range(shards):
            # The pools' sizes add up to `total`: threads are dealt to them in turn, so a process with no more call
            # threads than connections never waits for one.
            size = total // shards + (i < total % shards)
            # An idle connection is dropped after KEEPALIVE_SECONDS, well before the servers' own idle timeouts
            # (uvicorn and Node close after 5 s): a call sent on a connection the server closes at that moment
            # fails without an answer, and costs its job an attempt.
            limits = httpx.Limits(
                max_connections=size, max_keepalive_connections=size, keepalive_expiry=KEEPALIVE_SECONDS
            )
            self.clients.append(
                httpx.Client(
                    timeout=timeout,
                    limits=limits,
                    transport=stoppable_transport(limits=limits, verify=verify),  # a stop closes a call from outside
                )
            )
        self._turn = itertools.count()
        self._local = threading.local()

    def client(self) -> httpx.Client:
        """This thread's client."""
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self.clients[next(self._turn) % len(self.clients)]
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()


class Calls:
    """The threads a worker process runs its calls (and webhook deliveries) on, at most `size` at once
    (MMJOBS_WORKER_CONCURRENCY).

    A Celery message names several jobs (issue 17.1: one message, one claim statement for all of them); the Celery
    thread that receives it (a receiver, MMJOBS_WORKER_RECEIVERS of them per process) reserves a slot per job it
    takes, claims them, starts each job's attempt here and returns. A receiver that finds no slot free waits a
    moment for one (WAIT_SECONDS), then passes the whole message on (workers/tasks.py): a full process leaves
    messages to the others, and holds none of them longer than that moment. A full process does not fetch at all
    (workers/celery_app.py `FetchOnlyWithRoom`): passing on is for the race where the last slot went while a
    message was on its way."""

    # How long a receiver holding a message waits for a free slot before it passes the message on: a full process
    # must not sit on work another one could start now (as prefetching would), nor bounce messages in a tight loop.
    WAIT_SECONDS = 1.0

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = size
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="call")

    def reserve(self, wanted: int, *, wait: float) -> int:
        """Wait up to `wait` seconds for one free slot, then take up to `wanted` of those free; returns how many were
        taken (0: none came free in time)."""
        if wanted <= 0:
            return 0
        with self._cond:
            if not self._cond.wait_for(lambda: self._free > 0, timeout=wait):
                return 0
            taken = min(wanted, self._free)
            self._free -= taken
            return taken

    def release(self, n: int = 1) -> None:
        if n > 0:
            with self._cond:
                self._free += n
                self._cond.notify(n)

    def start(self, attempt: Callable[[], None]) -> None:
        """Run `attempt` on a call thread; its slot (reserved by the caller) is released when it returns."""
        self._pool.submit(self._run, attempt)

    def _run(self, attempt: Callable[[], None]) -> None:
        try:
            attempt()
        except BaseException:
            log.exception("a call thread crashed; its job's lease will lapse and the scheduler hands it back")
        finally:
            self.release()

    def busy(self) -> int:
        with self._cond:
            return self.size - self._free

    def free(self) -> int:
        """Slots free now, read without the lock: a hint for the message consumer (workers/celery_app.py), which
        stops fetching while it is no more than the messages its receivers hold."""
        return self._free


class JobAborted(Exception):
    """Raised inside a running call when its job is no longer ours (canceled, or the lease was lost)."""


@dataclass
class InFlight:
    number: int
    tenant_id: str
    output_tokens: int = 0
    # Set from any thread (the stop-notice listener, the lease keeper, shutdown); the call's reads honour it
    # (workers/stopping.py). The read that follows a stop raises inside the provider, which then reports the
    # stream broken with its usage so far and the upstream's request id, so the stop is billed like a break.
    aborted: StopSignal = field(default_factory=StopSignal)

    def progress(self, output_tokens: int) -> None:
        self.output_tokens = output_tokens


class Runtime:
    def __init__(self, settings: Settings) -> None:
        if not settings.minimax_api_key and not settings.upstream_accounts:
            raise RuntimeError(
                "MINIMAX_API_KEY is not set: set it to your MiniMax key (or run `mmjobs up`, which starts "
                "the bundled simulator and points the worker at it)"
            )
        self.settings = settings
        tracing.configure(settings, role="worker")  # no-op unless MMJOBS_OTEL_ENABLED
        self.api_key = settings.minimax_api_key or ""
        # Unique per process start, not only host:pid: containers run their worker as pid 1, a restarted one keeps its
        # hostname, and a worker takes up a claim of its own by this name (workers/execution.py `run_job`).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.session_factory: sessionmaker[Session] = make_session_factory(engine_for(settings))
        # The lease keeper's own connection: behind thousands of call threads queueing for the pool, renewals
        # came too late and leases of healthy calls lapsed (issue 17.3).
        self._keeper_sessions: sessionmaker[Session] = make_session_factory(
            make_engine(settings.database_url, pool_size=1, max_overflow=0)
        )
        self.gate = Gate(settings.worker_active_threads)
        self.calls = Calls(settings.worker_concurrency)
        self.upstream_clients = UpstreamClients(settings)
        # A bounded pool: thousands of call threads would otherwise open one Redis connection each at a burst of
        # finishes (Redis allows 10,000 clients in all). A thread waits up to `timeout` for a free connection.
        self.redis = redis.Redis(
            connection_pool=redis.BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=settings.worker_redis_max_connections,
                timeout=20,
                socket_timeout=5,
                socket_connect_timeout=2,
            )
        )
        self.limiter = RateLimiter(
            self.redis, account=settings.upstream_account, window_seconds=settings.limiter_window_seconds
        )
        # The upstream accounts (MMJOBS_UPSTREAM_ACCOUNTS): which key, base URL and limiter an attempt uses.
        self.account_pool = AccountPool(
            settings, self.redis, limiter=self.limiter, sessions=lambda: self.session_factory
        )
        # Tenants' own keys, decrypted here when a call is made (never by the scheduler: DESIGN.md decision 10).
        self.tenant_keys = TenantKeyRing(settings, lambda: self.session_factory)
        self.prices = settings.price_table()
        self.retry_policy = RetryPolicy(
            base_seconds=settings.retry_base_seconds, cap_seconds=settings.retry_cap_seconds
        )
        # Group commit of finished calls (workers/finisher.py); MMJOBS_FINISH_GROUP_MAX=1 records each alone.
        self.finisher = (
            Finisher(self.session_factory, self.prices, max_group=settings.finish_group_max)
            if settings.finish_group_max > 1
            else None
        )
        self._inflight: dict[str, InFlight] = {}
        self._taking: set[str] = set()  # job ids a thread of this process is claiming right now (`start_taking`)
        self._closing = False  # shutting down (`hand_back_all`): no new claims
        self._lock = threading.Lock()
        self._taken = threading.Condition(self._lock)  # notified when a job leaves `_taking`
        worker_metrics.CALLS_IN_FLIGHT.set_function(self.in_flight)  # served on MMJOBS_WORKER_METRICS_PORT
        self._keeper = threading.Thread(target=self._keep_leases, name="lease-keeper", daemon=True)
        self._keeper.start()
        self._listener = threading.Thread(target=self._listen_for_stops, name="stop-listener", daemon=True)
        self._listener.start()

    def register(
        self, job_id: str, number: int, tenant_id: str, *, deadline: float | None = None, deadline_reason: str = ""
    ) -> InFlight:
        """Track a call in flight; `deadline` (time.monotonic()) stops it, for `deadline_reason`."""
        signal = StopSignal(deadline=deadline, deadline_reason=deadline_reason) if deadline_reason else StopSignal()
        handle = InFlight(number=number, tenant_id=tenant_id, aborted=signal)
        with self._lock:
            self._inflight[job_id] = handle
        return handle

    def start_taking(self, job_id: str) -> bool:
        """Whether this thread may claim `job_id`: not while another thread of this process is claiming it (its
        message delivered twice to this process). A thread that runs it is no obstacle: its next attempt's message
        may come before that thread has unregistered, and the claim itself decides. Never once the process is
        shutting down (`hand_back_all`)."""
        with self._lock:
            if self._closing or job_id in self._taking:
                return False
            self._taking.add(job_id)
            return True

    def runs(self, job_id: str) -> bool:
        """Whether a thread of this process runs `job_id` (registered, its outcome not yet written)."""
        with self._lock:
            return job_id in self._inflight

    def done_taking(self, job_id: str) -> None:
        with self._lock:
            self._taking.discard(job_id)
            self._taken.notify_all()

    def unregister(self, job_id: str) -> None:
        with self._lock:
            self._inflight.pop(job_id, None)

    def in_flight(self) -> int:
        return len(self._inflight)

    def hand_back_all(self, *, claims_within: float = 5.0) -> list[str]:
        """Shutting down: give every job still in flight back to the queue and free its permit. Their calls are
        stopped (their sockets shut down at once, workers/stopping.py) and, if their threads get to write before
        the process exits, billed for what they used.

        No claim starts from now on, and the claims under way (`_taking`: committed perhaps, not registered yet)
        get up to `claims_within` seconds to register, so their jobs are handed back too instead of left to lapse
        into lease recovery at the cost of an attempt."""
        with self._lock:
            self._closing = True
            self._taken.wait_for(lambda: not self._taking, timeout=claims_within)
            if self._taking:
                log.warning("shutdown: %d claims still under way are not handed back", len(self._taking))
            snapshot = dict(self._inflight)
        if not snapshot:
            return []
        with transaction(self.session_factory) as session:
            handed = transitions.hand_back(session, owner=self.owner, job_ids=list(snapshot))
        for job_id in handed:
            handle = snapshot[job_id]
            handle.aborted.stop(LEASE_LOST)
            try:
                self.limiter.release(f"{job_id}:{handle.number}", tenant=handle.tenant_id)
            except redis.RedisError as exc:
                log.warning("could not free the permit of %s: %s", job_id, exc)
        return handed

    @property
    def http(self) -> httpx.Client:
        """The calling thread's client to MiniMax (`UpstreamClients`)."""
        return self.upstream_clients.client()

    def _keep_leases(self) -> None:
        """Renew every held lease in one UPDATE per interval, and stop calls whose job is gone.

        Progress (output tokens so far) is written more often than leases are renewed: with the lease interval
        alone (10 s by default) a call shorter than that never showed anything but 0. Between renewals, only the
        jobs whose count moved are written (the same UPDATE, which also extends their leases)."""
        tick = min(self.settings.lease_refresh_seconds, self.settings.progress_refresh_seconds)
        renewed = time.monotonic()
        written: dict[tuple[str, int], int] = {}  # (job, attempt) -> output tokens last written
        while True:
            threading.Event().wait(tick)
            with self._lock:
                snapshot = dict(self._inflight)
            renew = time.monotonic() - renewed >= self.settings.lease_refresh_seconds - tick / 2
            if renew:
                renewed = time.monotonic()
                written = {k: n for k, n in written.items() if k[0] in snapshot}
            else:
                snapshot = {j: h for j, h in snapshot.items() if h.output_tokens != written.get((j, h.number), 0)}
            if not snapshot:
                continue
            held = {job_id: (h.number, h.output_tokens) for job_id, h in snapshot.items()}
            try:
                with transaction(self._keeper_sessions) as session:
                    alive = transitions.extend_leases(
                        session, owner=self.owner, held=held, lease_seconds=self.settings.lease_seconds
                    )
            except Exception:
                log.exception("could not renew leases; retrying in %ss", self.settings.lease_refresh_seconds)
                continue
            for job_id, handle in snapshot.items():
                if job_id not in alive:
                    # Canceled (the notice was missed) or recovered by the sweeper: either way not ours now.
                    handle.aborted.stop(LEASE_LOST)
            written.update(((job_id, number), count) for job_id, (number, count) in held.items())
            if renew:
                self._extend_permits(snapshot)

    def stop_call(self, job_id: str, reason: str = CANCELED) -> bool:
        """Stop the call of `job_id` if this process runs it; True if it did."""
        with self._lock:
            handle = self._inflight.get(job_id)
        if handle is None:
            return False
        handle.aborted.stop(reason)
        return True

    def _listen_for_stops(self) -> None:
        """Stop a canceled job's call within a moment of the cancel: the API publishes the job id on commit
        (service/dispatch.py). Faster than lease renewal (MMJOBS_LEASE_REFRESH_SECONDS, 10 s), which stays the
        fallback when a notice is lost (Redis down, this process reconnecting)."""
        backoff = 0.5
        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(STOP_CHANNEL)
                backoff = 0.5
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and isinstance(message.get("data"), bytes):
                        job_id = message["data"].decode(errors="replace")
                        if self.stop_call(job_id):
                            log.info("job %s canceled: stopping its call", job_id)
            except redis.RedisError as exc:
                log.warning("stop notices unavailable (%s); canceled calls stop at lease renewal", exc)
                threading.Event().wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _extend_permits(self, snapshot: dict[str, InFlight]) -> None:
        """Every held tenant concurrency slot, in pipelined round trips (not one per call: 2,500 calls in flight
        were 2,500 round trips every renewal)."""
        try:
            self.limiter.extend_many(
                [(f"{job_id}:{handle.number}", handle.tenant_id) for job_id, handle in snapshot.items()],
                hold_seconds=self.settings.lease_seconds * 2,
            )
        except redis.RedisError as exc:
            log.warning("could not extend tenant concurrency permits: %s", exc)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def current_runtime() -> Runtime | None:
    """This process's runtime if a task created it (None: nothing ever ran here)."""
    return _runtime


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                _runtime = Runtime(get_settings())
    return _runtime
