"""idempotency keys whose response showed a secret are kept without it

Revision ID: 5e3c1a9d7b24
Revises: 5b1e7c2a9d40
Create Date: 2026-11-30 16:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5e3c1a9d7b24"
down_revision: str | None = "5b1e7c2a9d40"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("idempotency_keys", sa.Column("replayable", sa.Boolean(), server_default=sa.true(), nullable=False))


def downgrade() -> None:
    op.drop_column("idempotency_keys", "replayable")
