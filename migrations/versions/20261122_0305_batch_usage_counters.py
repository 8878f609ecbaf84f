"""batch usage counters

Revision ID: 0b70a4328c7b
Revises: 2bce737159bc
Create Date: 2026-11-22 03:05:14.067467
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db

revision: str = '0b70a4328c7b'
down_revision: str | None = '2bce737159bc'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # server_default fills existing rows; dropped afterwards so models and schema agree.
    with op.batch_alter_table('batches') as batch:
        for name in ('input_tokens', 'output_tokens', 'cache_read_tokens', 'cache_write_tokens'):
            batch.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('cost_usd', sa.Numeric(precision=18, scale=9), nullable=False, server_default='0'))
        batch.add_column(sa.Column('started_at', service.db.UTCDateTime(timezone=True), nullable=True, comment='When its first request started.'))
    with op.batch_alter_table('batches') as batch:
        for name in ('input_tokens', 'output_tokens', 'cache_read_tokens', 'cache_write_tokens', 'cost_usd'):
            batch.alter_column(name, server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('batches') as batch:
        for name in ('started_at', 'cost_usd', 'cache_write_tokens', 'cache_read_tokens', 'output_tokens', 'input_tokens'):
            batch.drop_column(name)
