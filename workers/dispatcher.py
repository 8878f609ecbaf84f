"""Fair, rate-limited dispatch: which waiting jobs go to the broker now (DESIGN.md decisions 4 and 5).

A job is published only once it holds a rate-limit permit, so the broker queue never holds more than workers
can start, and a saturated model or tenant never blocks another: each (tenant, model) group is served
round-robin, and a limit that says no stops only the jobs it governs.

A pass never holds a row lock while it talks to Redis (issue 13 point 5): it reads its candidates without locks,
reserves a batch request's budget in a short transaction of its own (the job row, then budgets by id: the lock
order of service/db.py), takes the rate-limit permits, marks the granted jobs dispatched and commits, and only then
publishes them, as one Redis pipeline. A message never names a row that is not committed; a message lost after
the commit is published again after `redispatch_after_seconds`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.catalog import get_model
from service.config import Settings
from service.db import run_in_transaction
from service.jobs import transitions
from service.jobs.transitions import Candidate
from service.observability import tracing
from service.status import group_key
from service.tenants import repository as tenants_repo
from service.usage import admission, budgets
from workers.limiter import Limits, RateLimiter
from workers.limiter.accounts import TENANT_KEY_HELD, AccountPool

CANDIDATES_PER_GROUP = 200
# `_reserve_budget`'s answer for a job that stopped waiting since the pass read it.
_GONE = "gone"
# (groups, tenant caps, budgeted tenants, how many the broker may take, candidates per group)
_Plan = tuple[
    list[tuple[str, str]],
    dict[str, tuple[int | None, int | None, int | None]],
    set[str],
    int,
    dict[tuple[str, str], deque[Candidate]],
]


def _per_group(budget: int) -> int:
    """How many candidates a pass reads of each group: the broker's room, at most CANDIDATES_PER_GROUP."""
    return max(1, min(budget, CANDIDATES_PER_GROUP))


def permit_id(job_id: str, attempt: int) -> str:
    """The permit an attempt runs under; the worker derives the same id from its claim to settle it."""
    return f"{job_id}:{attempt}"


@dataclass
class Pace:
    """Spreads one model's grants evenly (GCRA): the shared limiter guarantees the per-minute caps, this keeps a
    backlog from reaching MiniMax as one burst at the start of every minute. A grant costs the time its request
    and its tokens take at the configured rates, whichever is longer."""

    seconds_per_request: float
    seconds_per_token: float
    tat: float = 0.0  # theoretical arrival time of the next grant

    def cost(self, tokens: int) -> float:
        return max(self.seconds_per_request, tokens * self.seconds_per_token)

    def _burst(self, tokens: int) -> float:
        # Up to a second ahead, and never less than one whole request, however large.
        return max(1.0, self.cost(tokens))

    def ready(self, now: float, tokens: int) -> bool:
        return self.tat - now <= self._burst(tokens)

    def take(self, now: float, tokens: int) -> None:
        self.tat = max(self.tat, now) + self.cost(tokens)

    def wait(self, now: float, tokens: int) -> float:
        return max(0.0, self.tat - self._burst(tokens) - now)


@dataclass
class DispatchReport:
    published: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    waits: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Seconds until the earliest refused group could be served: the scheduler sleeps no longer.
    next_wake: float = math.inf
    # The pass stopped at max_unclaimed with work left: run again as soon as workers have claimed some.
    saturated: bool = False
    # A group's candidates, read at most CANDIDATES_PER_GROUP a pass, were all granted: it may have more waiting
    # that this pass did not read. Run again at once (not after scheduler_interval: that capped dispatch at
    # 200 jobs per 0.6 s, ~330 jobs/s, for one large batch; issue 17.1).
    more: bool = False


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        limiter: RateLimiter,
        publish: Callable[[str], None],
        batch: Callable[[], AbstractContextManager[Any]] = nullcontext,
        pool: AccountPool | None = None,
    ) -> None:
        """`publish` sends one job id to the broker; `batch` opens the pipeline a pass publishes through (the
        scheduler's kombu `Producer.batch`), flushed when it closes."""
        self.settings = settings
        self.limiter = limiter
        self.publish = publish
        self.batch = batch
        # The upstream accounts (workers/limiter/accounts.py): permits are taken on one of them, paced to their sum.
        self.pool = pool or AccountPool(settings, limiter.client, limiter=limiter, sessions=lambda: self._factory)
        self.limits = self.pool.total_limits()
        self.prices = settings.price_table()
        self.paces: dict[str, Pace] = {}
        self._factory: sessionmaker[Session] | None = None
        self._rotation = 0

    def _pace(self, model: str) -> Pace:
        if model not in self.paces:
            rpm, tpm = self.limits[model]
            window = self.settings.limiter_window_seconds
            self.paces[model] = Pace(seconds_per_request=window / rpm, seconds_per_token=window / tpm)
        return self.paces[model]

    def _tokens(self, c: Candidate) -> int:
        share = self.settings.output_reserve_share
        output = c.max_tokens if c.max_tokens is not None else self.settings.default_output_reserve
        return c.estimated_input_tokens + math.ceil(output * share)

    def run(self, factory: sessionmaker[Session], *, now: datetime) -> DispatchReport:
        """One pass. `now` is the database's clock (the scheduler reads it once per pass)."""
        report = DispatchReport()
        self._factory = factory
        redispatch_before = now - timedelta(seconds=self.settings.redispatch_after_seconds)
        plan = run_in_transaction(factory, lambda s: self._plan(s, now=now, redispatch_before=redispatch_before))
        if plan is None:
            return report
        groups, caps, budgeted, budget, queues = plan
        self.pool.out_of_rotation(fresh=True)  # accounts that left the rotation since the last pass get nothing
        self.pool.refresh_tenants()  # tenants' own accounts, in clear: never their keys (DESIGN.md decision 10)
        self.pool.tenant_holds(fresh=True)  # own keys a worker found unusable since the last pass
        if budget <= 0:
            for tenant_id, model in groups:
                report.waits[group_key(tenant_id, model)] = {"reason": "worker_capacity"}
            report.saturated = True
            return report
        read_full = {g for g in groups if len(queues[g]) >= _per_group(budget)}  # may have more than were read
        granted: list[Candidate] = []
        too_large: list[tuple[Candidate, str]] = []
        blocked_models: dict[str, dict[str, Any]] = {}
        blocked_groups: dict[tuple[str, str], dict[str, Any]] = {}
        clock = time.monotonic()
        while budget > 0:
            progressed = False
            for g in groups:
                queue = queues[g]
                if not queue or g[1] in blocked_models or g in blocked_groups or budget <= 0:
                    continue
                candidate = queue[0]
                pace = self._pace(candidate.model)
                tokens = self._tokens(candidate)
                if not pace.ready(clock, tokens):
                    delay = pace.wait(clock, tokens)
                    binding = "tpm" if tokens * pace.seconds_per_token > pace.seconds_per_request else "rpm"
                    blocked_models[candidate.model] = self._wait("rate_limit", binding, now, delay)
                    report.next_wake = min(report.next_wake, delay)
                    continue
                if not candidate.budget_reserved and candidate.tenant_id in budgeted:
                    refusal = self._reserve_budget(factory, candidate, now)
                    if refusal is _GONE:
                        queue.popleft()  # canceled, expired, claimed or reserved elsewhere since it was read
                        progressed = True
                        continue
                    if refusal is not None:
                        # The batch pauses here, and resumes by itself once the budget is raised.
                        blocked_groups[g] = {"reason": "budget", "detail": refusal}
                        continue
                outcome = self._acquire(candidate, caps.get(candidate.tenant_id))
                if outcome is None:
                    queue.popleft()
                    pace.take(clock, tokens)
                    granted.append(candidate)
                    budget -= 1
                    progressed = True
                    continue
                reason, retry_after = outcome
                if math.isinf(retry_after):
                    queue.popleft()
                    too_large.append((candidate, reason))
                    progressed = True
                    continue
                report.next_wake = min(report.next_wake, retry_after)
                if reason == TENANT_KEY_HELD:
                    blocked_groups[g] = self._key_wait(candidate.tenant_id, now, retry_after)
                    continue
                tenant_cap = reason.startswith("tenant")
                wait = self._wait("tenant_cap" if tenant_cap else "rate_limit", reason, now, retry_after)
                if tenant_cap:
                    blocked_groups[g] = wait
                else:
                    blocked_models[candidate.model] = wait
            if not progressed:
                break

        def settle(session: Session) -> tuple[list[str], list[str]]:
            failed = [
                c.job_id
                for c, reason in too_large
                if transitions.fail_waiting(
                    session, job_id=c.job_id, error=_too_large(c, reason, self._tokens(c)), now=now
                )
            ]
            marked = transitions.mark_dispatched(
                session, job_ids=[c.job_id for c in granted], now=now, redispatch_before=redispatch_before
            )
            # Published in the order granted (fairness), not the id order the rows were locked in.
            ours = set(marked)
            return failed, [c.job_id for c in granted if c.job_id in ours]

        report.failed, published = run_in_transaction(factory, settle)
        self._release_missed(factory, granted, published, redispatch_before)
        # After the commit, never before: a message must not name a row that could still roll back.
        try:
            by_id = {c.job_id: c for c in granted}
            with self.batch():
                for job_id in published:
                    with tracing.span("job.dispatch", parent=by_id[job_id].traceparent, attributes=_ids(by_id[job_id])):
                        self.publish(job_id)
        except Exception:
            run_in_transaction(factory, lambda s: transitions.unmark_dispatched(s, job_ids=published, now=now))
            raise
        report.published = published
        report.saturated = budget <= 0
        report.more = budget > 0 and any(not queues[g] for g in read_full)
        for g in groups:
            if queues[g]:
                report.waits[group_key(*g)] = (
                    blocked_groups.get(g) or blocked_models.get(g[1]) or {"reason": "worker_capacity"}
                )
        return report

    def _plan(self, session: Session, *, now: datetime, redispatch_before: datetime) -> _Plan | None:
        """What this pass may publish and the candidates of each group, read in one short transaction."""
        budget = self.settings.max_unclaimed - transitions.count_unclaimed(
            session, now=now, redispatch_before=redispatch_before
        )
        groups = transitions.waiting_groups(session, now=now, redispatch_before=redispatch_before)
        if not groups:
            return None
        if budget <= 0:
            return groups, {}, set(), budget, {}
        # Start the round-robin at a different group each pass, so no tenant is always first.
        start = self._rotation % len(groups)
        self._rotation += 1
        groups = groups[start:] + groups[:start]
        tenant_ids = sorted({t for t, _ in groups})
        caps = tenants_repo.caps(session, tenant_ids=tenant_ids)
        budgeted = budgets.budgeted_tenants(session, tenant_ids=tenant_ids)
        per_group = _per_group(budget)
        queues = {
            g: deque(
                transitions.group_candidates(
                    session, tenant_id=g[0], model=g[1], now=now, redispatch_before=redispatch_before, limit=per_group
                )
            )
            for g in groups
        }
        return groups, caps, budgeted, budget, queues

    def _release_missed(
        self,
        factory: sessionmaker[Session],
        granted: list[Candidate],
        published: list[str],
        redispatch_before: datetime,
    ) -> None:
        """A granted job this pass could not mark (canceled, expired or claimed since it was read, locked by a
        cancel, or marked by another scheduler) does not run under our permit: free the permits nobody will use.
        A job another scheduler marked keeps the permit: it is the same one (the id is the job's next attempt)."""
        marked = set(published)
        missed = {c.job_id: c for c in granted if c.job_id not in marked}
        if not missed:
            return
        attempts = {c.job_id: c.attempt_count + 1 for c in missed.values()}
        unused = run_in_transaction(
            factory,
            lambda s: transitions.unused_permits(s, attempts=attempts, redispatch_before=redispatch_before),
        )
        for job_id in unused:
            c = missed[job_id]
            self.limiter.release(permit_id(c.job_id, c.attempt_count + 1), tenant=c.tenant_id)

    def _reserve_budget(self, factory: sessionmaker[Session], c: Candidate, now: datetime) -> str | None:
        """Hold the request's maximum cost on its budgets, in a short transaction of its own: the job row first
        (still waiting?), then the budgets by id (lock order: service/db.py). None when held; `_GONE` when the
        job no longer waits; else why the budget refuses."""
        info = get_model(c.model)
        assert info is not None
        most = admission.estimate(
            self.prices, model=info, input_tokens=c.estimated_input_tokens, max_tokens=c.max_tokens
        ).cost_max

        def reserve(session: Session) -> str | None:
            if not transitions.lock_unreserved(session, job_id=c.job_id):
                return _GONE
            refusal = admission.admit(
                session, job_id=c.job_id, tenant_id=c.tenant_id, api_key_id=c.api_key_id, amount=most, now=now
            )
            return None if refusal is None else refusal.message()

        return run_in_transaction(factory, reserve)

    def _acquire(self, c: Candidate, cap: tuple[int | None, int | None, int | None] | None) -> tuple[str, float] | None:
        tenant_limits = Limits(rpm=cap[0], tpm=cap[1], concurrency=cap[2]) if cap and any(cap) else None
        _, decision = self.pool.acquire(
            model=c.model,
            tenant=c.tenant_id,
            tokens=self._tokens(c),
            tenant_limits=tenant_limits,
            permit_id=permit_id(c.job_id, c.attempt_count + 1),
            hold_seconds=self.settings.lease_seconds * 2,
        )
        if decision.granted:
            return None
        return decision.reason or "rpm", decision.retry_after

    def _key_wait(self, tenant_id: str, now: datetime, seconds: float) -> dict[str, Any]:
        """The tenant's own key is held (a worker could not use it): the wait names why."""
        hold = self.pool.tenant_holds().get(tenant_id)
        limit = (f"minimax_{hold.code}" if hold.code else hold.why) if hold else "unusable"
        wait = self._wait("tenant_key", limit, now, seconds)
        if hold is not None:
            wait["detail"] = hold.message
        return wait

    @staticmethod
    def _wait(reason: str, limit: str, now: datetime, seconds: float) -> dict[str, Any]:
        return {"reason": reason, "limit": limit, "until": (now + timedelta(seconds=seconds)).isoformat()}


def _ids(c: Candidate) -> dict[str, tracing.AttributeValue | None]:
    return tracing.job_attributes(job_id=c.job_id, tenant=c.tenant_id, batch_id=c.batch_id, attempt=c.attempt_count + 1)


def _too_large(c: Candidate, reason: str, tokens: int) -> dict[str, Any]:
    scope = "your tenant's" if reason.startswith("tenant") else "the upstream account's"
    return {
        "type": "exceeds_rate_limit",
        "message": f"the request needs about {tokens:,} tokens, more than {scope} whole per-minute token limit "
        f"for {c.model}: it can never be admitted. Lower max_tokens, split the input, or raise the limit.",
        "classification": "permanent",
    }
