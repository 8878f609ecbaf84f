"""job_attempts.account and usage_ledger.account: the upstream account each attempt ran on and was billed to
(issue 17.2: several accounts and tenants' own keys; usage per account)

Revision ID: f3c6a0d91b52
Revises: e5b81f2ac937
Create Date: 2026-12-01 04:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f3c6a0d91b52"
down_revision: str | None = "e5b81f2ac937"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("job_attempts", "usage_ledger"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("account", sa.String(length=120), nullable=True))


def downgrade() -> None:
    for table in ("usage_ledger", "job_attempts"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("account")
