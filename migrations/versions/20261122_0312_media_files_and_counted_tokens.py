"""media files and counted tokens

Revision ID: 7aca3fa24b22
Revises: 0b70a4328c7b
Create Date: 2026-11-22 03:12:36.486796
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db

revision: str = '7aca3fa24b22'
down_revision: str | None = '0b70a4328c7b'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns only: existing rows need no default.
    with op.batch_alter_table('files') as batch:
        batch.add_column(sa.Column('sha256', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('media_type', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('minimax_file_id', sa.String(length=32), nullable=True))
        batch.add_column(sa.Column('minimax_uploaded_at', service.db.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('minimax_upload_until', service.db.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('counted_input_tokens', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('counted_input_tokens')
    with op.batch_alter_table('files') as batch:
        for name in ('minimax_upload_until', 'minimax_uploaded_at', 'minimax_file_id', 'media_type', 'sha256'):
            batch.drop_column(name)
