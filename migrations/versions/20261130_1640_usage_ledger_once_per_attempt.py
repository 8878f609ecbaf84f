"""usage ledger: one row per (job, attempt), and an `estimated` flag

Revision ID: 5b1e7c2a9d40
Revises: d7832ead6218
Create Date: 2026-11-30 16:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '5b1e7c2a9d40'
down_revision: str | None = 'd7832ead6218'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('usage_ledger', sa.Column('estimated', sa.Boolean(), server_default='false', nullable=False))
    # Rows doubled by a retried write before this constraint existed: keep the first of each (job, attempt).
    op.execute(
        "DELETE FROM usage_ledger a USING usage_ledger b "
        "WHERE a.job_id = b.job_id AND a.attempt = b.attempt AND a.id > b.id"
    )
    op.drop_index('ix_usage_ledger_job_id', table_name='usage_ledger')
    op.create_unique_constraint('uq_usage_ledger_job_id_attempt', 'usage_ledger', ['job_id', 'attempt'])


def downgrade() -> None:
    op.drop_constraint('uq_usage_ledger_job_id_attempt', 'usage_ledger', type_='unique')
    op.create_index('ix_usage_ledger_job_id', 'usage_ledger', ['job_id'], unique=False)
    op.drop_column('usage_ledger', 'estimated')
