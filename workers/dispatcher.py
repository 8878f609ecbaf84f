"""Fair, rate-limited dispatch: which waiting jobs go to the broker now (DESIGN.md decisions 4 and 5).

A job is published only once it holds a rate-limit permit, so the broker queue never holds more than workers
can start, and a saturated model or tenant never blocks another: each (tenant, model) group is served
round-robin, and a limit that says no stops only the jobs it governs.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from service.catalog import get_model
from service.config import Settings
from service.jobs import transitions
from service.jobs.transitions import Candidate
from service.status import group_key
from service.tenants import repository as tenants_repo
from service.usage import admission, budgets
from workers.limiter import Limits, RateLimiter

CANDIDATES_PER_GROUP = 200


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


class Dispatcher:
    def __init__(self, settings: Settings, limiter: RateLimiter, publish: Callable[[str], None]) -> None:
        self.settings = settings
        self.limiter = limiter
        self.publish = publish
        self.limits = settings.model_limits()
        self.prices = settings.price_table()
        self.paces: dict[str, Pace] = {}
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

    def run(self, session: Session, *, now: datetime) -> DispatchReport:
        report = DispatchReport()
        redispatch_before = now - timedelta(seconds=self.settings.redispatch_after_seconds)
        budget = self.settings.max_unclaimed - transitions.count_unclaimed(
            session, now=now, redispatch_before=redispatch_before
        )
        groups = transitions.waiting_groups(session, now=now, redispatch_before=redispatch_before)
        if not groups:
            return report
        if budget <= 0:
            for tenant_id, model in groups:
                report.waits[group_key(tenant_id, model)] = {"reason": "worker_capacity"}
            report.saturated = True
            return report
        # Start the round-robin at a different group each pass, so no tenant is always first.
        start = self._rotation % len(groups)
        self._rotation += 1
        groups = groups[start:] + groups[:start]
        tenant_ids = sorted({t for t, _ in groups})
        caps = tenants_repo.caps(session, tenant_ids=tenant_ids)
        budgeted = budgets.budgeted_tenants(session, tenant_ids=tenant_ids)
        per_group = max(1, min(budget, CANDIDATES_PER_GROUP))
        queues = {
            g: deque(
                transitions.group_candidates(
                    session,
                    tenant_id=g[0],
                    model=g[1],
                    now=now,
                    redispatch_before=redispatch_before,
                    limit=per_group,
                )
            )
            for g in groups
        }
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
                    refusal = self._reserve_budget(session, candidate, now)
                    if refusal is not None:
                        # The batch pauses here, and resumes by itself once the budget is raised.
                        blocked_groups[g] = {"reason": "budget", "detail": refusal}
                        continue
                outcome = self._acquire(candidate, caps.get(candidate.tenant_id))
                if outcome is None:
                    queue.popleft()
                    pace.take(clock, tokens)
                    self.publish(candidate.job_id)
                    report.published.append(candidate.job_id)
                    budget -= 1
                    progressed = True
                    continue
                reason, retry_after = outcome
                if math.isinf(retry_after):
                    queue.popleft()
                    if transitions.fail_waiting(
                        session,
                        job_id=candidate.job_id,
                        error=_too_large(candidate, reason, self._tokens(candidate)),
                        now=now,
                    ):
                        report.failed.append(candidate.job_id)
                    progressed = True
                    continue
                report.next_wake = min(report.next_wake, retry_after)
                tenant_cap = reason.startswith("tenant")
                wait = self._wait("tenant_cap" if tenant_cap else "rate_limit", reason, now, retry_after)
                if tenant_cap:
                    blocked_groups[g] = wait
                else:
                    blocked_models[candidate.model] = wait
            if not progressed:
                break
        transitions.mark_dispatched(session, job_ids=report.published, now=now)
        report.saturated = budget <= 0
        for g in groups:
            if queues[g]:
                report.waits[group_key(*g)] = (
                    blocked_groups.get(g) or blocked_models.get(g[1]) or {"reason": "worker_capacity"}
                )
        return report

    def _reserve_budget(self, session: Session, c: Candidate, now: datetime) -> str | None:
        info = get_model(c.model)
        assert info is not None
        most = admission.estimate(
            self.prices, model=info, input_tokens=c.estimated_input_tokens, max_tokens=c.max_tokens
        ).cost_max
        refusal = admission.admit(
            session, job_id=c.job_id, tenant_id=c.tenant_id, api_key_id=c.api_key_id, amount=most, now=now
        )
        return None if refusal is None else refusal.message()

    def _acquire(self, c: Candidate, cap: tuple[int | None, int | None, int | None] | None) -> tuple[str, float] | None:
        rpm, tpm = self.limits.get(c.model, (None, None))
        tenant_limits = Limits(rpm=cap[0], tpm=cap[1], concurrency=cap[2]) if cap and any(cap) else None
        decision = self.limiter.acquire(
            model=c.model,
            tenant=c.tenant_id,
            tokens=self._tokens(c),
            model_limits=Limits(rpm=rpm, tpm=tpm),
            tenant_limits=tenant_limits,
            permit_id=permit_id(c.job_id, c.attempt_count + 1),
            hold_seconds=self.settings.lease_seconds * 2,
        )
        if decision.granted:
            return None
        return decision.reason or "rpm", decision.retry_after

    @staticmethod
    def _wait(reason: str, limit: str, now: datetime, seconds: float) -> dict[str, Any]:
        return {"reason": reason, "limit": limit, "until": (now + timedelta(seconds=seconds)).isoformat()}


def _too_large(c: Candidate, reason: str, tokens: int) -> dict[str, Any]:
    scope = "your tenant's" if reason.startswith("tenant") else "the upstream account's"
    return {
        "type": "exceeds_rate_limit",
        "message": f"the request needs about {tokens:,} tokens, more than {scope} whole per-minute token limit "
        f"for {c.model}: it can never be admitted. Lower max_tokens, split the input, or raise the limit.",
        "classification": "permanent",
    }
