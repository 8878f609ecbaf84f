"""batch_tallies: what finishing jobs add to their batch, folded into the batch row by the scheduler (issue 17.1)

Revision ID: c41d8e2b7f63
Revises: a17c2e0f5b31
Create Date: 2026-12-01 00:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c41d8e2b7f63"
down_revision: str | None = "a17c2e0f5b31"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batch_tallies",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.String(length=48), nullable=False),
        sa.Column("succeeded", sa.Integer(), nullable=False),
        sa.Column("errored", sa.Integer(), nullable=False),
        sa.Column("canceled", sa.Integer(), nullable=False),
        sa.Column("expired", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(18, 9), nullable=False),
    )
    op.create_index("ix_batch_tallies_batch_id", "batch_tallies", ["batch_id"])


def downgrade() -> None:
    op.drop_index("ix_batch_tallies_batch_id", table_name="batch_tallies")
    op.drop_table("batch_tallies")
