"""The guarded state transitions workers and the scheduler make. Each is one UPDATE that names the state it
expects, so two processes racing for the same job cannot both win (DESIGN.md decisions 1-3).

Locks follow the one order written in service/db.py (jobs by id -> job_attempts -> batches by id -> budgets by id
-> webhook endpoints -> deliveries). Sweeps over many jobs (expire, cancel, lease recovery) work in chunks: lock
at most CHUNK rows in id order with SKIP LOCKED, move them, and return, so one huge batch never becomes one huge
statement and a row someone else holds is taken on a later chunk instead of waited for. Deadlines and leases are
compared with the database's clock (`db_now`), never with the clock of whichever process runs the statement."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select, text, update
from sqlalchemy.orm import Session

from service.db import UNSYNCED, db_now, id_in, utcnow
from service.jobs.landing import LANDED, on_terminal
from service.models import TERMINAL, WAITING, Batch, BatchStatus, Job, JobAttempt, JobStatus, Tenant
from service.pricing import PriceTable, is_priority
from service.usage import ledger
from service.webhooks import outbox


@dataclass(frozen=True, kw_only=True)
class Claim:
    """A job a worker holds under lease; `number` is the attempt it is making (and its lease token)."""

    job_id: str
    number: int
    tenant_id: str
    model: str
    format: str
    params: dict[str, Any]
    max_attempts: int
    expires_at: datetime
    estimated_input_tokens: int
    api_key_id: str | None = None
    batch_id: str | None = None
    traceparent: str | None = None  # the trace the worker's spans continue (service/observability/tracing.py)
    account: str | None = None  # the upstream account the attempt's permit is on (service/accounts/), set by the worker
    budget_reserved: bool = True  # whether it holds budget reservations (none: its finish has none to release)
    budgeted: bool = True  # whether its tenant had any budget when it was claimed (none: its finish charges none)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How an attempt ended. `result` is set on success, `error` on failure."""

    classification: str
    http_status: int | None = None
    minimax_code: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    upstream_request_id: str | None = None
    usage: Mapping[str, int] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    # Set on a failure that will be tried again at that time; `retry_note` says why or why not.
    retry_at: datetime | None = None
    retry_note: str | None = None
    # MiniMax never received the request (it could not be reached): retried without using up an attempt.
    free_retry: bool = False
    # The upstream's own usage never arrived (a broken or stopped call): `usage` is our count (ledger `estimated`).
    estimated: bool = False

    @property
    def succeeded(self) -> bool:
        return self.result is not None


# Tenants the operator disabled (`mmjobs tenants disable`): their jobs are neither dispatched nor claimed.
DISABLED_TENANTS = select(Tenant.id).where(Tenant.disabled_at.is_not(None))
USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
# Rows one sweep statement moves at most: small enough for a short transaction, large enough that a
# 100,000-request batch takes a few dozen chunks.
CHUNK = 2000


def _lock_chunk(session: Session, where: Sequence[ColumnElement[bool]], *, limit: int) -> list[str]:
    """Lock up to `limit` job rows matching `where`, in id order (lock order: service/db.py), skipping rows another
    transaction holds: they are taken by a later chunk, never waited for."""
    query = select(Job.id).where(*where).order_by(Job.id).limit(limit).with_for_update(skip_locked=True, of=Job)
    return list(session.scalars(query))


def claim(session: Session, *, job_id: str, owner: str, lease_seconds: float) -> Claim | None:
    """Take a waiting job whose time has come, or None if someone else has it or it is not runnable."""
    claims = claim_many(session, job_ids=[job_id], owner=owner, lease_seconds=lease_seconds)
    return claims[0] if claims else None


def claim_many(session: Session, *, job_ids: Sequence[str], owner: str, lease_seconds: float) -> list[Claim]:
    """Take those of `job_ids` that wait and whose time has come; the others (someone else has them, or they are
    not runnable) are left alone. Returns the claims in the order of `job_ids`.

    Lock order (service/db.py): the job rows in id order (a locking read first: a multi-row UPDATE alone locks in
    whatever order its scan meets them), then their new attempts, then their batches' `started_at`, batches in id
    order. Due and deadline are judged by the database's clock, so a worker whose own clock lags still claims.

    On Postgres this is one statement (one round trip for the jobs of a whole message, issue 17.1): the jobs'
    UPDATE, their attempts' INSERT and the batches' `started_at` are data-modifying CTEs hanging off the claimed
    rows, so they run after them (and not at all when nothing was claimed)."""
    return _claims(session, _CLAIM_SQL, job_ids=job_ids, owner=owner, lease_seconds=lease_seconds)


def claimed_by(session: Session, *, job_ids: Sequence[str], owner: str, lease_seconds: float) -> list[Claim]:
    """The claims `owner` holds on `job_ids` (running under its name, their leases not lapsed), as `claim_many`
    returned them, their leases renewed from now. For a worker whose claim may have committed without its answer
    arriving (workers/execution.py `take`). One statement, like the claim; the rows in id order."""
    return _claims(session, _CLAIMED_BY_SQL, job_ids=job_ids, owner=owner, lease_seconds=lease_seconds)


def _claims(session: Session, sql: Any, *, job_ids: Sequence[str], owner: str, lease_seconds: float) -> list[Claim]:
    """Run a claim statement (`_CLAIM_SQL`, `_CLAIMED_BY_SQL`); the claims in the order of `job_ids`."""
    if not job_ids:
        return []
    params = {"job_ids": list(job_ids), "owner": owner, "lease_seconds": float(lease_seconds)}
    by_id = {row.id: row for row in session.execute(sql, params).all()}
    return [_claimed(job_id, by_id[job_id]) for job_id in dict.fromkeys(job_ids) if job_id in by_id]


def _claimed(job_id: str, row: Any) -> Claim:
    return Claim(
        job_id=job_id,
        number=row.attempt_count,
        tenant_id=row.tenant_id,
        model=row.model,
        format=row.format,
        params=row.params,
        max_attempts=row.max_attempts,
        expires_at=row.expires_at,
        estimated_input_tokens=row.estimated_input_tokens,
        api_key_id=row.api_key_id,
        batch_id=row.batch_id,
        traceparent=row.traceparent,
        budget_reserved=row.budget_reserved,
        budgeted=row.budgeted,
    )


# What a claim (and a take-up of one, `claimed_by`) reads back of its jobs: `_claimed` builds the Claim from it.
_CLAIM_COLUMNS = """jobs.id, jobs.attempt_count, jobs.tenant_id, jobs.model, jobs.format, jobs.params,
                  jobs.max_attempts, jobs.expires_at, jobs.estimated_input_tokens, jobs.api_key_id, jobs.batch_id,
                  jobs.traceparent, jobs.budget_reserved"""
_CLAIMABLE = """jobs.status IN ({waiting})
          AND jobs.next_attempt_at <= (SELECT at FROM now)
          AND jobs.expires_at > (SELECT at FROM now)""".format(
    waiting=", ".join(f"'{status.value}'" for status in sorted(WAITING))
)
_CLAIM_SQL = text(
    f"""
    WITH now AS (SELECT statement_timestamp() AS at),
    picked AS (
        SELECT jobs.id FROM jobs
        WHERE jobs.id = ANY(CAST(:job_ids AS text[]))
          AND {_CLAIMABLE}
          AND jobs.tenant_id NOT IN (SELECT tenants.id FROM tenants WHERE tenants.disabled_at IS NOT NULL)
          AND (jobs.batch_id IS NULL OR NOT EXISTS (
                SELECT 1 FROM batches WHERE batches.id = jobs.batch_id AND batches.status = 'canceling'))
        ORDER BY jobs.id
        FOR UPDATE OF jobs
    ),
    claimed AS (
        UPDATE jobs SET
            status = 'running',
            attempt_count = jobs.attempt_count + 1,
            lease_owner = :owner,
            lease_expires_at = (SELECT at FROM now) + make_interval(secs => :lease_seconds),
            started_at = coalesce(jobs.started_at, (SELECT at FROM now)),
            output_tokens_so_far = 0,
            updated_at = (SELECT at FROM now)
        FROM picked
        WHERE jobs.id = picked.id AND {_CLAIMABLE}
        RETURNING {_CLAIM_COLUMNS}
    ),
    attempt AS (
        INSERT INTO job_attempts (job_id, number, worker, started_at, input_tokens, output_tokens,
                                  cache_read_tokens, cache_write_tokens)
        SELECT claimed.id, claimed.attempt_count, :owner, (SELECT at FROM now), 0, 0, 0, 0 FROM claimed
    ),
    started AS (
        UPDATE batches SET started_at = (SELECT at FROM now), updated_at = (SELECT at FROM now)
        WHERE batches.id IN (
            SELECT b.id FROM batches b
            WHERE b.id IN (SELECT claimed.batch_id FROM claimed) AND b.started_at IS NULL
            ORDER BY b.id
            FOR UPDATE
        )
    )
    SELECT claimed.*, EXISTS (SELECT 1 FROM budgets WHERE budgets.tenant_id = claimed.tenant_id) AS budgeted
    FROM claimed
    """
).columns(params=Job.params.type, expires_at=Job.expires_at.type)
_CLAIMED_BY_SQL = text(
    f"""
    WITH now AS (SELECT statement_timestamp() AS at),
    picked AS (
        SELECT jobs.id FROM jobs
        WHERE jobs.id = ANY(CAST(:job_ids AS text[])) AND jobs.status = 'running' AND jobs.lease_owner = :owner
          AND jobs.lease_expires_at > (SELECT at FROM now)
        ORDER BY jobs.id
        FOR UPDATE
    ),
    held AS (
        UPDATE jobs SET lease_expires_at = (SELECT at FROM now) + make_interval(secs => :lease_seconds)
        FROM picked
        WHERE jobs.id = picked.id AND jobs.status = 'running' AND jobs.lease_owner = :owner
          AND jobs.lease_expires_at > (SELECT at FROM now)
        RETURNING {_CLAIM_COLUMNS}
    )
    SELECT held.*, EXISTS (SELECT 1 FROM budgets WHERE budgets.tenant_id = held.tenant_id) AS budgeted FROM held
    """
).columns(params=Job.params.type, expires_at=Job.expires_at.type)


def extend_leases(
    session: Session, *, owner: str, held: Mapping[str, tuple[int, int]], lease_seconds: float
) -> set[str]:
    """Extend the leases of the jobs this process still holds; returns the ids still ours.

    `held` maps job id -> (attempt number, output tokens so far). A job missing from the answer was
    canceled or recovered by the sweeper: its call should stop. Rows another transaction holds are skipped,
    never waited for: a renewal queued behind thousands of finishes let every other lease of the process lapse
    (issue 17.3). A skipped row is not renewed this time but judged by what is committed (a plain read): still
    running this attempt under `owner`, it is ours. A lock says nothing of the outcome: a statement that merely
    rechecked the row (an UPDATE or a locking sweep whose condition no longer held) keeps it locked until its
    transaction ends, and reading that as "not ours" stopped a healthy call (the media benchmark: a job failed
    as canceled half a second after its claim). A cancel or a recovery shows once committed, at the next renewal,
    and a cancel's stop notice comes sooner.
    """
    if not held:
        return set()
    ids = sorted(held)
    rows = session.execute(
        _EXTEND_LEASES_SQL,
        {
            "job_ids": ids,
            "numbers": [held[i][0] for i in ids],
            "tokens": [held[i][1] for i in ids],
            "owner": owner,
            "lease_seconds": lease_seconds,
        },
    )
    alive = {r.id for r in rows}
    skipped = sorted(set(held) - alive)
    if not skipped:
        return alive
    ours = (Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
    committed = session.execute(select(Job.id, Job.attempt_count).where(id_in(session, Job.id, skipped), *ours))
    return alive | {r.id for r in committed if held[r.id][0] == r.attempt_count}


# One statement for a renewal: the lease and the progress together. Written as two UPDATEs of the same row, the
# second re-checked the row's three foreign keys (Postgres skips that check only for a row version another
# transaction wrote): 0.75 nested statements per job in the overhead benchmark (issue 17.1).
# Lock order (service/db.py): the rows in id order first, so this never crosses lease recovery or a finish.
_EXTEND_LEASES_SQL = text(
    """
    WITH held AS (
        SELECT * FROM unnest(CAST(:job_ids AS text[]), CAST(:numbers AS integer[]), CAST(:tokens AS integer[]))
            AS held(id, number, tokens)
    ),
    locked AS (
        SELECT jobs.id FROM jobs
        WHERE jobs.id = ANY(CAST(:job_ids AS text[])) AND jobs.status = 'running' AND jobs.lease_owner = :owner
        ORDER BY jobs.id
        FOR UPDATE SKIP LOCKED
    )
    UPDATE jobs SET
        lease_expires_at = statement_timestamp() + make_interval(secs => :lease_seconds),
        output_tokens_so_far = held.tokens
    FROM locked JOIN held ON held.id = locked.id
    WHERE jobs.id = locked.id AND jobs.attempt_count = held.number
    RETURNING jobs.id
    """
)


def finish(session: Session, *, claim: Claim, outcome: Outcome, prices: PriceTable) -> bool:
    """Record the attempt and, if the job is still ours, its final state. Returns whether the job moved.

    Tokens billed always count toward the job, even when it was canceled while the call ran.
    """
    now = utcnow()
    usage = {k: int(outcome.usage.get(k, 0)) for k in USAGE_FIELDS}
    priority = is_priority(claim.params)
    priced = ledger.price(usage, model=claim.model, priority=priority, prices=prices)
    final = _final_values(outcome, now)
    if priced is not None:
        # Still running this attempt, the job cannot have its ledger row yet (ledger.record): its totals move in
        # the same UPDATE as its state (issue 17.1: one statement fewer per billed attempt).
        final |= priced.job_totals()
    # Lock order (service/db.py): the job row before its attempt (then batch, then budgets), the order lease
    # recovery and hand_back take them in. The job's own final UPDATE takes its lock (one round trip fewer,
    # issue 17.1); when the job is no longer ours that UPDATE matches nothing, and the row is locked explicitly.
    moved = session.execute(
        update(Job)
        .where(Job.id == claim.job_id, Job.status == JobStatus.RUNNING, Job.attempt_count == claim.number)
        .values(final)
        .returning(*LANDED),
        execution_options=UNSYNCED,
    ).all()
    if not moved:
        session.execute(select(Job.id).where(Job.id == claim.job_id).with_for_update())
    session.execute(
        update(JobAttempt)
        .where(JobAttempt.job_id == claim.job_id, JobAttempt.number == claim.number)
        .values(
            ended_at=now,
            classification=outcome.classification,
            http_status=outcome.http_status,
            minimax_code=outcome.minimax_code,
            error_type=outcome.error_type,
            error_message=outcome.error_message,
            upstream_request_id=outcome.upstream_request_id,
            account=claim.account,
            **usage,
        ),
        execution_options=UNSYNCED,
    )
    batch_usage: dict[str, dict[str, Any]] = {}
    if priced is not None:
        # The batch's and budgets' totals (and the job's, unless the UPDATE above moved it) move inside
        # ledger.record, only if this attempt's row is new: finish run twice for one attempt (a lost COMMIT reply,
        # then a retry) bills once.
        crossed = ledger.record(
            session,
            job_id=claim.job_id,
            attempt=claim.number,
            tenant_id=claim.tenant_id,
            api_key_id=claim.api_key_id,
            batch_id=claim.batch_id,
            model=claim.model,
            format=claim.format,
            upstream_request_id=outcome.upstream_request_id,
            account=claim.account,
            priced=priced,
            priority=priority,
            prices=prices,
            now=now,
            estimated=outcome.estimated,
            batch_usage=batch_usage,
            budgeted=claim.budgeted,
            job_totals_added=bool(moved),
        )
        for budget in crossed:
            outbox.emit(
                session,
                tenant_id=budget.tenant_id,
                type="budget.soft_limit",
                data={
                    "id": budget.id,
                    "object": "budget",
                    "api_key_id": budget.api_key_id,
                    "period": budget.period,
                    "limit_usd": str(budget.limit_usd),
                    "soft_limit_usd": str(budget.soft_limit_usd),
                    "spent_usd": str(budget.spent_usd),
                },
            )
    # One tally for the batch (its count and usage); reservations released only if the job holds any.
    on_terminal(session, moved, now=now, usage=batch_usage, reserved=claim.budget_reserved)
    return bool(moved)


class NotAllLanded(Exception):
    """`finish_many` found a job of its group no longer running the attempt, or an attempt billed already: its
    transaction is rolled back, and the caller finishes each job of the group alone (`finish`)."""


def groupable(claim: Claim, outcome: Outcome) -> bool:
    """Whether `finish_many` may record this attempt: a billed success of a batch job whose tenant had no budget
    and that holds no reservation. Its finish then takes only the job, attempt and tally rows, none of the locks
    or events of budgets and single jobs' webhooks, which stay with `finish`."""
    return (
        outcome.succeeded
        and claim.batch_id is not None
        and not claim.budgeted
        and not claim.budget_reserved
        and any(outcome.usage.get(k) for k in USAGE_FIELDS)
    )


def finish_many(session: Session, *, group: Sequence[tuple[Claim, Outcome]], prices: PriceTable) -> None:
    """Record several `groupable` attempts in four statements, whatever their number (issue 17.1): what `finish`
    does for each, one multi-row statement per table (jobs, attempts, ledger, batch tallies). Every job must still
    be running its attempt and no attempt be billed yet; else it raises NotAllLanded, and the caller's transaction
    (rolled back) wrote nothing.

    Lock order (service/db.py): the jobs in id order (the first statement's CTE), then their attempts, then the
    batches' tallies (inserted, their batch rows only key-shared), as `finish` and lease recovery take them."""
    now = utcnow()
    priced_rows = []
    for claim, outcome in sorted(group, key=lambda pair: pair[0].job_id):
        priority = is_priority(claim.params)
        priced = ledger.price(outcome.usage, model=claim.model, priority=priority, prices=prices)
        if priced is None:
            raise NotAllLanded(f"attempt {claim.number} of job {claim.job_id} used nothing")
        priced_rows.append((claim, outcome, priced, priority))
    if len({claim.job_id for claim, *_ in priced_rows}) != len(priced_rows):
        raise NotAllLanded("a job is in the group twice")
    ids = [claim.job_id for claim, *_ in priced_rows]
    columns: dict[str, list[Any]] = {
        "ids": ids,
        "numbers": [claim.number for claim, *_ in priced_rows],
        "results": [json.dumps(outcome.result) for _, outcome, _, _ in priced_rows],
        "cost": [priced.cost for _, _, priced, _ in priced_rows],
        "classification": [outcome.classification for _, outcome, _, _ in priced_rows],
        "http_status": [outcome.http_status for _, outcome, _, _ in priced_rows],
        "minimax_code": [outcome.minimax_code for _, outcome, _, _ in priced_rows],
        "request_id": [outcome.upstream_request_id for _, outcome, _, _ in priced_rows],
        "account": [claim.account for claim, *_ in priced_rows],
    }
    for name in USAGE_FIELDS:
        columns[name] = [getattr(priced.tokens, name) for _, _, priced, _ in priced_rows]
    landed = session.execute(_FINISH_JOBS_SQL, {**columns, "now": now}).all()
    if len(landed) != len(ids):
        raise NotAllLanded(f"{len(ids) - len(landed)} of {len(ids)} jobs no longer run their attempt")
    session.execute(_FINISH_ATTEMPTS_SQL, {**columns, "now": now})
    ledger_columns = {
        "tenant_ids": [claim.tenant_id for claim, *_ in priced_rows],
        "api_key_ids": [claim.api_key_id for claim, *_ in priced_rows],
        "batch_ids": [claim.batch_id for claim, *_ in priced_rows],
        "models": [claim.model for claim, *_ in priced_rows],
        "formats": [claim.format for claim, *_ in priced_rows],
        "priority": [priority for *_, priority in priced_rows],
        "estimated": [outcome.estimated for _, outcome, _, _ in priced_rows],
    }
    billed = session.execute(
        _BILL_SQL, {**columns, **ledger_columns, "now": now, "price_version": prices.version}
    ).all()
    if len(billed) != len(ids):
        raise NotAllLanded(f"{len(ids) - len(billed)} of {len(ids)} attempts were billed already")
    batch_usage: dict[str, Counter[str]] = {}
    for claim, _, priced, _ in priced_rows:
        assert claim.batch_id is not None  # groupable
        batch_usage.setdefault(claim.batch_id, Counter()).update(
            {**{name: getattr(priced.tokens, name) for name in USAGE_FIELDS}, "cost_usd": priced.cost}
        )
    on_terminal(session, landed, now=now, usage=batch_usage, reserved=False)


# `finish` for a group: the job rows locked in id order, then moved out of the attempt each names, with its result
# and its totals. A job no longer running that attempt is locked but not moved (the caller sees fewer rows).
_FINISH_JOBS_SQL = text(
    """
    WITH done AS (
        SELECT * FROM unnest(
            CAST(:ids AS text[]), CAST(:numbers AS integer[]), CAST(:results AS text[]),
            CAST(:input_tokens AS bigint[]), CAST(:output_tokens AS bigint[]), CAST(:cache_read_tokens AS bigint[]),
            CAST(:cache_write_tokens AS bigint[]), CAST(:cost AS numeric[])
        ) AS done(id, number, result, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost)
    ),
    locked AS (
        SELECT jobs.id FROM jobs WHERE jobs.id = ANY(CAST(:ids AS text[])) ORDER BY jobs.id FOR UPDATE
    )
    UPDATE jobs SET
        status = 'succeeded', result = CAST(done.result AS jsonb), error = NULL,
        finished_at = :now, updated_at = :now, lease_expires_at = NULL, lease_owner = NULL,
        input_tokens = jobs.input_tokens + done.input_tokens,
        output_tokens = jobs.output_tokens + done.output_tokens,
        cache_read_tokens = jobs.cache_read_tokens + done.cache_read_tokens,
        cache_write_tokens = jobs.cache_write_tokens + done.cache_write_tokens,
        cost_usd = jobs.cost_usd + done.cost
    FROM locked JOIN done ON done.id = locked.id
    WHERE jobs.id = locked.id AND jobs.status = 'running' AND jobs.attempt_count = done.number
    RETURNING jobs.id, jobs.batch_id, jobs.status
    """
)

# The ledger rows, one per attempt, as ledger.record inserts them one by one: a text statement over arrays, the
# same SQL whatever the group's size, like the two above (a multi-row ORM insert is one compiled statement per row
# count, each compiled once, then cached). An attempt billed already adds nothing and returns no row.
_BILL_SQL = text(
    """
    INSERT INTO usage_ledger (
        at, tenant_id, api_key_id, job_id, batch_id, attempt, model, format, upstream_request_id, account,
        input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, priority_tier, cost_usd,
        price_version, estimated
    )
    SELECT :now, b.tenant_id, b.api_key_id, b.job_id, b.batch_id, b.attempt, b.model, b.format, b.request_id,
           b.account, b.input_tokens, b.output_tokens, b.cache_read_tokens, b.cache_write_tokens, b.priority,
           b.cost, :price_version, b.estimated
    FROM unnest(
        CAST(:tenant_ids AS text[]), CAST(:api_key_ids AS text[]), CAST(:ids AS text[]), CAST(:batch_ids AS text[]),
        CAST(:numbers AS integer[]), CAST(:models AS text[]), CAST(:formats AS text[]), CAST(:request_id AS text[]),
        CAST(:account AS text[]), CAST(:input_tokens AS bigint[]), CAST(:output_tokens AS bigint[]),
        CAST(:cache_read_tokens AS bigint[]), CAST(:cache_write_tokens AS bigint[]), CAST(:priority AS boolean[]),
        CAST(:cost AS numeric[]), CAST(:estimated AS boolean[])
    ) AS b(tenant_id, api_key_id, job_id, batch_id, attempt, model, format, request_id, account, input_tokens,
           output_tokens, cache_read_tokens, cache_write_tokens, priority, cost, estimated)
    ON CONFLICT (job_id, attempt) DO NOTHING
    RETURNING job_id
    """
)

# The attempts' ends, as `finish` writes them one by one.
_FINISH_ATTEMPTS_SQL = text(
    """
    UPDATE job_attempts SET
        ended_at = :now, classification = done.classification, http_status = done.http_status,
        minimax_code = done.minimax_code, error_type = NULL, error_message = NULL,
        upstream_request_id = done.request_id, account = done.account,
        input_tokens = done.input_tokens, output_tokens = done.output_tokens,
        cache_read_tokens = done.cache_read_tokens, cache_write_tokens = done.cache_write_tokens
    FROM unnest(
        CAST(:ids AS text[]), CAST(:numbers AS integer[]), CAST(:classification AS text[]),
        CAST(:http_status AS integer[]), CAST(:minimax_code AS integer[]), CAST(:request_id AS text[]),
        CAST(:account AS text[]), CAST(:input_tokens AS bigint[]), CAST(:output_tokens AS bigint[]),
        CAST(:cache_read_tokens AS bigint[]), CAST(:cache_write_tokens AS bigint[])
    ) AS done(id, number, classification, http_status, minimax_code, request_id, account,
              input_tokens, output_tokens, cache_read_tokens, cache_write_tokens)
    WHERE job_attempts.job_id = done.id AND job_attempts.number = done.number
    """
)


def _final_values(outcome: Outcome, now: datetime) -> dict[str, Any]:
    """The job's columns once this attempt ended: final, or waiting for its retry."""
    final: dict[str, Any] = {
        "finished_at": now,
        "updated_at": now,
        "lease_expires_at": None,
        "lease_owner": None,
    }
    if outcome.succeeded:
        final |= {"status": JobStatus.SUCCEEDED, "result": outcome.result, "error": None}
    else:
        error = {
            "type": outcome.error_type or "error",
            "message": outcome.error_message or "the call failed",
            "classification": outcome.classification,
            "http_status": outcome.http_status,
            "minimax_code": outcome.minimax_code,
            "retry": outcome.retry_note,
        }
        if outcome.retry_at is not None:
            # Not finished: the scheduler dispatches it again once `next_attempt_at` has come.
            final = {
                "status": JobStatus.RETRYING,
                "next_attempt_at": outcome.retry_at,
                "dispatched_at": None,
                "updated_at": now,
                "lease_expires_at": None,
                "lease_owner": None,
                "error": error,
            }
            if outcome.free_retry:
                final["max_attempts"] = Job.max_attempts + 1
        else:
            # A call stopped at the job's expires_at ends the job as `expired`, like a job that never started in time.
            status = JobStatus.EXPIRED if outcome.classification == "expired" else JobStatus.FAILED
            final |= {"status": status, "error": error}
    return final


LEASE_LOST_MESSAGE = "the worker stopped renewing its lease (crashed, killed or cut off); the job was handed back"


def recover_expired_leases(session: Session, *, now: datetime | None = None, limit: int = CHUNK) -> list[str]:
    """Hand back jobs whose worker vanished (at most `limit`; the next pass takes the rest). A job out of
    attempts fails and says why. Lock order (service/db.py): jobs in id order, then their attempts, then batches
    and budgets (on_terminal); a job whose worker is writing its outcome right now is skipped, not waited for."""
    now = now or db_now(session)
    ids = _lock_chunk(session, (Job.status == JobStatus.RUNNING, Job.lease_expires_at < now), limit=limit)
    if not ids:
        return []
    expired = (id_in(session, Job.id, ids), Job.status == JobStatus.RUNNING)
    exhausted = session.execute(
        update(Job)
        .where(*expired, Job.attempt_count >= Job.max_attempts)
        .values(
            status=JobStatus.FAILED,
            finished_at=now,
            updated_at=now,
            lease_owner=None,
            lease_expires_at=None,
            error={
                "type": "lease_expired",
                "message": LEASE_LOST_MESSAGE + ", and it has no attempts left",
                "classification": "lease_expired",
            },
        )
        .returning(Job.id, Job.attempt_count, Job.batch_id, Job.status)
    ).all()
    retried = _requeue(session, expired, now=now)
    rows = [*exhausted, *retried]
    _end_attempts(session, rows, now=now, classification="lease_expired", message=LEASE_LOST_MESSAGE)
    on_terminal(session, [(r.id, r.batch_id, r.status) for r in exhausted], now=now)
    return [r.id for r in rows]


def _requeue(session: Session, where: Sequence[Any], *, now: datetime, **values: Any) -> Sequence[Any]:
    """Running jobs matching `where` wait again, due now; returns (id, attempt_count) rows."""
    return session.execute(
        update(Job)
        .where(*where)
        .values(
            status=JobStatus.RETRYING,
            updated_at=now,
            lease_owner=None,
            lease_expires_at=None,
            dispatched_at=None,
            next_attempt_at=now,
            **values,
        )
        .returning(Job.id, Job.attempt_count)
    ).all()


def _end_attempts(
    session: Session,
    rows: Sequence[Any],  # (id, attempt_count, ...) rows
    *,
    now: datetime,
    classification: str,
    message: str,
    error_type: str = "",
) -> None:
    """End each job's current attempt (still open: its worker never wrote the outcome) with the reason why."""
    for row in rows:
        session.execute(
            update(JobAttempt)
            .where(JobAttempt.job_id == row.id, JobAttempt.number == row.attempt_count, JobAttempt.ended_at.is_(None))
            .values(
                ended_at=now,
                classification=classification,
                error_type=error_type or classification,
                error_message=message,
            )
        )


INTERRUPTED_MESSAGE = "the worker shut down during the call and handed the job back; this attempt does not count"


def hand_back(session: Session, *, owner: str, job_ids: Sequence[str], now: datetime | None = None) -> list[str]:
    """A worker shutting down gives back the jobs it still runs: they wait again at once, and the interrupted
    attempt is not counted against max_attempts. Returns the ids handed back; a job that finished or was taken
    over meanwhile is left alone."""
    if not job_ids:
        return []
    now = now or db_now(session)
    ours = (id_in(session, Job.id, sorted(job_ids)), Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
    # Lock order (service/db.py): the jobs in id order, then their attempts.
    locked = list(session.scalars(select(Job.id).where(*ours).order_by(Job.id).with_for_update()))
    if not locked:
        return []
    rows = _requeue(session, (id_in(session, Job.id, locked), *ours[1:]), now=now, max_attempts=Job.max_attempts + 1)
    _end_attempts(
        session, rows, now=now, classification="interrupted", message=INTERRUPTED_MESSAGE, error_type="worker_shutdown"
    )
    return [row.id for row in rows]


def expire_overdue(session: Session, *, now: datetime | None = None, limit: int = CHUNK) -> int:
    """One chunk of waiting jobs past their deadline become `expired` (running ones may still finish). Returns
    how many; fewer than `limit` means none is left (or the rest is locked: a later chunk takes it). Call it
    again, in a new transaction, until it says so."""
    now = now or db_now(session)
    ids = _lock_chunk(session, (Job.status.in_(WAITING), Job.expires_at <= now), limit=limit)
    if not ids:
        return 0
    landed = session.execute(
        update(Job)
        .where(id_in(session, Job.id, ids), Job.status.in_(WAITING))
        .values(
            status=JobStatus.EXPIRED,
            finished_at=now,
            updated_at=now,
            error={"type": "expired", "message": "the job did not start before its deadline (expires_at)"},
        )
        .returning(*LANDED)
    ).all()
    on_terminal(session, landed, now=now)
    return len(landed)


def _canceling(batch_id: str | None) -> Any:
    query = select(Batch.id).where(Batch.status == BatchStatus.CANCELING)
    if batch_id is not None:
        query = query.where(Batch.id == batch_id)
    return query.scalar_subquery()


def _cancel_locked(session: Session, ids: list[str], *, now: datetime, batch_id: str | None) -> int:
    if not ids:
        return 0
    landed = session.execute(
        update(Job)
        .where(id_in(session, Job.id, ids), Job.status.in_(WAITING), Job.batch_id.in_(_canceling(batch_id)))
        .values(status=JobStatus.CANCELED, finished_at=now, updated_at=now)
        .returning(*LANDED)
    ).all()
    on_terminal(session, landed, now=now)
    return len(landed)


def cancel_waiting(session: Session, *, now: datetime, batch_id: str | None = None, limit: int = CHUNK) -> int:
    """Cancel one chunk of the waiting jobs of canceling batches (one batch, or all). The scheduler calls it
    until none is left: a batch stays `canceling` until its last waiting job is canceled (and ends once nothing
    runs). Lock order (service/db.py): the job rows, then their batches."""
    ids = _lock_chunk(session, (Job.batch_id.in_(_canceling(batch_id)), Job.status.in_(WAITING)), limit=limit)
    return _cancel_locked(session, ids, now=now, batch_id=batch_id)


# Requests a cancel over the API cancels itself; the scheduler does the rest within a few passes.
API_CANCEL_CHUNK = 500


def start_batch_cancel(session: Session, *, batch_id: str, now: datetime, limit: int = API_CANCEL_CHUNK) -> int:
    """Mark an in-progress batch `canceling` and cancel a first chunk of its waiting requests; the scheduler
    cancels the rest, so an API call answers at once whatever the batch's size. Returns how many were canceled.

    Lock order (service/db.py): the chunk of job rows first (SKIP LOCKED: a job a worker is claiming right now is
    left to the scheduler), then the batch row. The other way round met `claim` (job, then the batch's
    `started_at`) and the dispatch pass head on: deadlock."""
    waiting = (Job.batch_id == batch_id, Job.status.in_(WAITING))
    ids = _lock_chunk(session, waiting, limit=limit)
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == BatchStatus.IN_PROGRESS)
        .values(status=BatchStatus.CANCELING, cancel_initiated_at=now)
    )
    return _cancel_locked(session, ids, now=now, batch_id=batch_id)


@dataclass(frozen=True, kw_only=True, slots=True)
class Candidate:
    job_id: str
    tenant_id: str
    model: str
    attempt_count: int
    estimated_input_tokens: int
    max_tokens: int | None
    batch_id: str | None = None
    api_key_id: str | None = None
    budget_reserved: bool = True
    traceparent: str | None = None


def _dispatchable(now: datetime, redispatch_before: datetime) -> tuple[Any, ...]:
    """Waiting, due, and either never published or published so long ago that the message must be lost
    (Redis restarted empty, a worker died holding it)."""
    return (
        Job.status.in_(WAITING),
        Job.next_attempt_at <= now,
        Job.expires_at > now,
        (Job.dispatched_at.is_(None)) | (Job.dispatched_at < redispatch_before),
        _not_canceling(),
    )


def _not_canceling() -> ColumnElement[bool]:
    """Not a request of a canceling batch: the scheduler cancels those chunk by chunk, and none of them may be
    dispatched or claimed meanwhile."""
    canceling = select(Batch.id).where(Batch.id == Job.batch_id, Batch.status == BatchStatus.CANCELING)
    return Job.batch_id.is_(None) | ~canceling.exists()


def count_unclaimed(session: Session, *, now: datetime, redispatch_before: datetime) -> int:
    """Jobs published recently but not claimed yet: what sits in the broker queue right now."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.status.in_(WAITING), Job.dispatched_at >= redispatch_before, Job.dispatched_at <= now)
        )
        or 0
    )


def waiting_groups(session: Session, *, now: datetime, redispatch_before: datetime) -> list[tuple[str, str]]:
    """(tenant, model) pairs with dispatchable work, the one waiting longest first."""
    rows = session.execute(
        select(Job.tenant_id, Job.model, func.min(Job.id))
        .where(*_dispatchable(now, redispatch_before), Job.tenant_id.not_in(DISABLED_TENANTS))  # issue 14.4
        .group_by(Job.tenant_id, Job.model)
        .order_by(func.min(Job.id))
    ).all()
    return [(r[0], r[1]) for r in rows]


def group_candidates(
    session: Session, *, tenant_id: str, model: str, now: datetime, redispatch_before: datetime, limit: int
) -> list[Candidate]:
    """The next jobs of one tenant and model: highest priority first, then oldest. Read without locks: the
    dispatch pass holds no row lock while it talks to Redis; `mark_dispatched` settles who publishes a job."""
    rows = session.execute(
        select(
            Job.id,
            Job.tenant_id,
            Job.model,
            Job.attempt_count,
            Job.estimated_input_tokens,
            Job.max_tokens,
            Job.batch_id,
            Job.api_key_id,
            Job.budget_reserved,
            Job.traceparent,
        )
        .where(Job.tenant_id == tenant_id, Job.model == model, *_dispatchable(now, redispatch_before))
        # A tenant's single jobs go before its batch requests, then priority, then age.
        .order_by(Job.batch_id.is_not(None), Job.priority.desc(), Job.id)
        .limit(limit)
    ).all()
    return [
        Candidate(
            job_id=r.id,
            tenant_id=r.tenant_id,
            model=r.model,
            attempt_count=r.attempt_count,
            estimated_input_tokens=r.estimated_input_tokens,
            max_tokens=r.max_tokens,
            batch_id=r.batch_id,
            api_key_id=r.api_key_id,
            budget_reserved=r.budget_reserved,
            traceparent=r.traceparent,
        )
        for r in rows
    ]


def mark_dispatched(session: Session, *, job_ids: list[str], now: datetime, redispatch_before: datetime) -> list[str]:
    """Mark dispatched those of `job_ids` still waiting and not marked by another scheduler meanwhile; returns
    them, the jobs this pass may publish (after commit). Lock order (service/db.py): the jobs in id order, and a
    row another transaction holds (a cancel, a claim) is skipped, not waited for."""
    if not job_ids:
        return []
    dispatchable = (
        id_in(session, Job.id, sorted(job_ids)),
        Job.status.in_(WAITING),
        (Job.dispatched_at.is_(None)) | (Job.dispatched_at < redispatch_before),
        _not_canceling(),
    )
    ids = _lock_chunk(session, dispatchable, limit=len(job_ids))
    if ids:
        session.execute(update(Job).where(id_in(session, Job.id, ids)).values(dispatched_at=now))
    return ids


def unmark_dispatched(session: Session, *, job_ids: list[str], now: datetime) -> None:
    """Publishing failed after the commit: jobs this pass marked become dispatchable again at once (instead of
    after redispatch_after). A message that did reach the broker is harmless: the claim decides."""
    if job_ids:
        session.execute(
            update(Job)
            .where(id_in(session, Job.id, sorted(job_ids)), Job.status.in_(WAITING), Job.dispatched_at == now)
            .values(dispatched_at=None)
        )


def lock_unreserved(session: Session, *, job_id: str) -> bool:
    """Lock one job if it still waits with no budget hold (the first lock of a transaction that then takes
    budgets, in the lock order of service/db.py); False if it was canceled, expired or claimed meanwhile, or
    another scheduler reserved its budget since this one read it (two holds for one job would be one too many)."""
    query = (
        select(Job.id)
        .where(Job.id == job_id, Job.status.in_(WAITING), Job.budget_reserved.is_(False))
        .with_for_update()
    )
    return session.execute(query).first() is not None


def unused_permits(session: Session, *, attempts: Mapping[str, int], redispatch_before: datetime) -> list[str]:
    """Of jobs granted a permit for attempt `attempts[id]` that this pass could not mark dispatched, those whose
    permit nobody will use: the job ended, or that attempt already began, or it still waits with no message out.
    Its rows are locked (in id order, service/db.py), waiting for a cancel, a claim or another scheduler's mark
    that holds them, so the answer is what they committed, not what they were about to."""
    if not attempts:
        return []
    rows = session.execute(
        select(Job.id, Job.status, Job.attempt_count, Job.dispatched_at)
        .where(id_in(session, Job.id, sorted(attempts)))
        .order_by(Job.id)
        .with_for_update()
    ).all()
    unused = []
    for row in rows:
        attempt = attempts[row.id]
        if row.status == JobStatus.RUNNING:
            in_use = row.attempt_count == attempt  # a worker claimed this attempt: it settles the permit
        elif row.status in TERMINAL or row.attempt_count >= attempt:
            in_use = False  # over, or that attempt already ran and ended
        else:  # still waits for this attempt: in use while another scheduler's message names it
            in_use = row.dispatched_at is not None and row.dispatched_at >= redispatch_before
        if not in_use:
            unused.append(row.id)
    return unused


def fail_waiting(session: Session, *, job_id: str, error: dict[str, Any], now: datetime) -> bool:
    """Fail a job that can never run (e.g. larger than the account's whole TPM limit). Lock order (service/db.py):
    the job, then (on_terminal) its batch and budgets; run in a transaction that holds no budget lock yet."""
    landed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(WAITING))
        .values(status=JobStatus.FAILED, finished_at=now, updated_at=now, error=error)
        .returning(*LANDED)
    ).all()
    on_terminal(session, landed, now=now)
    return bool(landed)
