"""The intake maxima per tenant: jobs waiting to run, batches not ended, schedules, bytes of stored files; and the
refusal of any create by a disabled tenant.

Each check runs after the create has written its rows, in the same transaction, and counts them too; a refusal
raises, so the caller's transaction (or savepoint) rolls back and nothing is stored. Only creating routes pay for
it: one indexed count, and only for a limit that is set.

Exactness and LOCK ORDER. Two creates that each fit could both pass if they counted at the same time, so before
counting, a create takes its tenant's intake lock (a transaction-level advisory lock) and holds it to commit.
It is always the LAST lock such a transaction takes (after jobs, batches and budgets rows), and a request
transaction takes it for one tenant only, so it can close no cycle: whoever holds it waits for nothing else.
Inside a savepoint (a scheduler pass firing many schedules in one transaction, or a manual trigger) the lock is
not taken: it would outlive the savepoint and be held while that transaction goes on to lock budget rows for
the next schedule, which could deadlock with a request of the same tenant. There the count alone decides, and a
run racing a request of the same tenant may overshoot a maximum by that one run.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from service.api.errors import APIError
from service.config import Settings
from service.limits import policy, repository
from service.models import ApiKey, Tenant

JOBS = "jobs waiting to run (queued or retrying, batch requests included)"
BATCHES = "batches in progress"
HOW = "see GET /v1/limits; the operator can change it with `mmjobs tenants limits`"


def tenant_of(session: Session, key: ApiKey) -> Tenant:
    """The key's tenant: from the session's identity map when it was loaded with the key (a request: no query),
    else by id (a key from another session, or none for a schedule whose key was deleted)."""
    tenant = session.get(Tenant, key.tenant_id)
    assert tenant is not None
    return tenant


def refuse_if_disabled(tenant: Tenant) -> None:
    if tenant.disabled_at is not None:
        raise APIError(
            403,
            "tenant_disabled",
            f"tenant {tenant.name!r} is disabled: it can read and cancel its work but create nothing, and nothing "
            "of it runs (ask the operator: `mmjobs tenants enable`)",
        )


def _check(
    session: Session,
    limit: policy.Limit,
    *,
    tenant: Tenant,
    count: Callable[[], int],
    adds: int,
    status: int,
    what: str,
    advice: str,
    locked_count: Callable[[], int] | None = None,
) -> None:
    """`locked_count`, where given, takes the intake lock and counts in one round trip."""
    if limit.value is None:
        return
    if session.in_nested_transaction():
        total = count()
    elif locked_count is not None:
        total = locked_count()
    else:
        repository.lock_intake(session, tenant_id=tenant.id)
        total = count()
    if total > limit.value:
        raise APIError(
            status,
            "limit_exceeded",
            f"{limit.name}: your tenant may have at most {limit.value:,} {what}; it has {total - adds:,} and this "
            f"request adds {adds:,}. {advice} ({HOW})",
        )


def admit_jobs(session: Session, *, key: ApiKey, settings: Settings, adds: int) -> None:
    """After `adds` jobs were written: within max_queued_jobs? 429 if not (they drain as jobs run)."""
    tenant = tenant_of(session, key)
    refuse_if_disabled(tenant)
    _check(
        session, policy.for_tenant(tenant, settings).max_queued_jobs, tenant=tenant,
        count=lambda: repository.queued_jobs(session, tenant_id=tenant.id), adds=adds, status=429,
        what=JOBS,
        advice="Retry once some have run, or cancel some.",
        locked_count=lambda: repository.locked_queued_jobs(session, tenant_id=tenant.id),
    )  # fmt: skip


def precheck_upload(session: Session, *, key: ApiKey, settings: Settings) -> None:
    """`precheck_batch` for a batch route, before it spools the body: a disabled tenant or one at a maximum is
    refused before it uploads anything. The read transaction then ends, so the upload that follows holds no
    pooled connection (as after the key lookup, service/api/deps.py)."""
    precheck_batch(session, key=key, settings=settings)
    session.commit()


def precheck_batch(session: Session, *, key: ApiKey, settings: Settings) -> None:
    """Before a batch body is read: refuse at once if the tenant is disabled or already at a maximum, rather than
    after streaming a large upload. Not exact (no lock); `admit_batch` is, once the batch is written."""
    tenant = tenant_of(session, key)
    refuse_if_disabled(tenant)
    limits = policy.for_tenant(tenant, settings)
    checks: tuple[tuple[policy.Limit, Callable[[], int], str], ...] = (
        (limits.max_active_batches, lambda: repository.active_batches(session, tenant_id=tenant.id), BATCHES),
        (limits.max_queued_jobs, lambda: repository.queued_jobs(session, tenant_id=tenant.id), JOBS),
    )
    for limit, count, what in checks:
        if limit.value is not None and (has := count()) >= limit.value:
            raise APIError(
                429, "limit_exceeded",
                f"{limit.name}: your tenant may have at most {limit.value:,} {what}; it has {has:,} already. Retry "
                f"once some have finished. ({HOW})",
            )  # fmt: skip


def admit_batch(session: Session, *, key: ApiKey, settings: Settings, requests: int) -> None:
    """After a batch and its `requests` jobs were written: within max_active_batches and max_queued_jobs?"""
    tenant = tenant_of(session, key)
    refuse_if_disabled(tenant)
    _check(
        session, policy.for_tenant(tenant, settings).max_active_batches, tenant=tenant,
        count=lambda: repository.active_batches(session, tenant_id=tenant.id), adds=1, status=429,
        what=BATCHES, advice="Retry once one has ended, or cancel one.",
    )  # fmt: skip
    admit_jobs(session, key=key, settings=settings, adds=requests)


def admit_schedule(session: Session, *, key: ApiKey, settings: Settings) -> None:
    """After a schedule was written: within max_schedules? 409 if not: only deleting one makes room."""
    tenant = tenant_of(session, key)
    refuse_if_disabled(tenant)
    _check(
        session, policy.for_tenant(tenant, settings).max_schedules, tenant=tenant,
        count=lambda: repository.schedules(session, tenant_id=tenant.id), adds=1, status=409,
        what="schedules", advice="Delete one first.",
    )  # fmt: skip


def admit_file(session: Session, *, key: ApiKey, settings: Settings, size: int) -> None:
    """After a file row was written: within max_stored_file_bytes? 409 if not: only deleting files makes room.
    The caller removes the stored bytes when this raises."""
    tenant = tenant_of(session, key)
    refuse_if_disabled(tenant)
    _check(
        session, policy.for_tenant(tenant, settings).max_stored_file_bytes, tenant=tenant,
        count=lambda: repository.stored_file_bytes(session, tenant_id=tenant.id), adds=size, status=409,
        what="bytes of stored files", advice="Delete some files first.",
    )  # fmt: skip
