"""mmjobs_locked_waiting_jobs(tenant): the tenant's intake lock and its waiting-jobs count in one round trip
(issue 17.1: every submission took both, one statement each)

A function, not one statement: a statement's snapshot is taken before it starts, so a count in the statement that
takes the lock could miss the rows of a create that committed while it waited. In a VOLATILE plpgsql function each
statement takes its own snapshot (READ COMMITTED), so the count runs after the lock is held and sees every
committed create. The lock is service/limits/quotas.py's: same class id and key, held to commit.

Revision ID: d7a3c9e1f024
Revises: c41d8e2b7f63
Create Date: 2026-12-01 04:20:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "d7a3c9e1f024"
down_revision: str | None = "c41d8e2b7f63"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION mmjobs_locked_waiting_jobs(tenant text) RETURNS bigint
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
          PERFORM pg_advisory_xact_lock(1317502, hashtext(tenant));
          RETURN (SELECT count(*) FROM jobs WHERE tenant_id = tenant AND status IN ('queued', 'retrying'));
        END
        $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION mmjobs_locked_waiting_jobs(text)")
