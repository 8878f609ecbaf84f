"""jobs.traceparent: the trace a job's dispatch and worker spans continue

Revision ID: 9b2f4c6e8a10
Revises: 5e1b7c2a9f40
Create Date: 2026-11-30 17:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9b2f4c6e8a10"
down_revision: str | None = "5e1b7c2a9f40"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("traceparent", sa.String(length=55), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "traceparent")
