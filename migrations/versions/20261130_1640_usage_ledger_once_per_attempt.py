"""usage ledger: one row per (job, attempt), and an `estimated` flag

Revision ID: 5b1e7c2a9d40
Revises: c2b507135dea
Create Date: 2026-11-30 16:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5b1e7c2a9d40"
down_revision: str | None = "c2b507135dea"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows doubled by a retried write before this constraint existed: keep the first of each (job, attempt).
    # (Portable SQL: `mmjobs up` runs these migrations on SQLite too.)
    op.execute("DELETE FROM usage_ledger WHERE id NOT IN (SELECT min(id) FROM usage_ledger GROUP BY job_id, attempt)")
    with op.batch_alter_table("usage_ledger") as batch:
        batch.add_column(sa.Column("estimated", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.drop_index("ix_usage_ledger_job_id")
        batch.create_unique_constraint("uq_usage_ledger_job_id_attempt", ["job_id", "attempt"])


def downgrade() -> None:
    with op.batch_alter_table("usage_ledger") as batch:
        batch.drop_constraint("uq_usage_ledger_job_id_attempt", type_="unique")
        batch.create_index("ix_usage_ledger_job_id", ["job_id"], unique=False)
        batch.drop_column("estimated")
