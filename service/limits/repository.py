"""The counts the intake maxima compare against, and the per-tenant lock that makes them exact."""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from service.models import WAITING, Batch, BatchStatus, File, Job, Schedule

# pg_advisory_xact_lock(classid, objid): this class id keeps the intake locks apart from any other advisory lock.
# The function mmjobs_locked_waiting_jobs (migration d7a3c9e1f024) takes the same lock with this id written out.
INTAKE_LOCK_CLASS = 0x14_1A7E


def lock_intake(session: Session, *, tenant_id: str) -> None:
    """Serialize the tenant's creates from here to the end of the transaction, so two requests that each fit
    cannot both pass a maximum. See service/limits/quotas.py for when it is taken (last)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    session.execute(
        text(f"SELECT pg_advisory_xact_lock({INTAKE_LOCK_CLASS}, hashtext(:tenant))"), {"tenant": tenant_id}
    )


def locked_queued_jobs(session: Session, *, tenant_id: str) -> int:
    """`lock_intake` then `queued_jobs`, in one round trip: the function mmjobs_locked_waiting_jobs (migration
    d7a3c9e1f024), which counts only once it holds the lock (issue 17.1: every submission takes both)."""
    if session.get_bind().dialect.name != "postgresql":
        lock_intake(session, tenant_id=tenant_id)
        return queued_jobs(session, tenant_id=tenant_id)
    return int(session.scalar(text("SELECT mmjobs_locked_waiting_jobs(:tenant)"), {"tenant": tenant_id}) or 0)


def queued_jobs(session: Session, *, tenant_id: str) -> int:
    """Jobs waiting to run (queued or retrying), batch requests included: the partial index ix_jobs_tenant_waiting.
    A Core statement on the table (run on every create): no ORM compilation for a count."""
    jobs = Job.__table__
    query = select(func.count()).select_from(jobs).where(jobs.c.tenant_id == tenant_id, jobs.c.status.in_(WAITING))
    return int(session.scalar(query) or 0)


def active_batches(session: Session, *, tenant_id: str) -> int:
    query = (
        select(func.count()).select_from(Batch).where(Batch.tenant_id == tenant_id, Batch.status != BatchStatus.ENDED)
    )
    return int(session.scalar(query) or 0)


def schedules(session: Session, *, tenant_id: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Schedule).where(Schedule.tenant_id == tenant_id)) or 0)


def stored_file_bytes(session: Session, *, tenant_id: str) -> int:
    return int(session.scalar(select(func.coalesce(func.sum(File.size), 0)).where(File.tenant_id == tenant_id)) or 0)
