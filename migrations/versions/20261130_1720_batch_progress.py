"""batch progress events: when the last was sent, and at what count

Revision ID: 5e1b7c2a9f40
Revises: 5e3c1a9d7b24
Create Date: 2026-11-30 17:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db

revision: str = '5e1b7c2a9f40'
down_revision: str | None = '5e3c1a9d7b24'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('batches') as batch:
        batch.add_column(sa.Column('progress_at', service.db.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('progress_done', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('batches') as batch:
        batch.drop_column('progress_done')
        batch.drop_column('progress_at')
