"""files.minimax_account: which upstream account (base URL and key) the kept MiniMax file id belongs to; a file id
is valid only in the account that uploaded it (issue 17.2: several accounts and tenants' own keys)

Revision ID: e5b81f2ac937
Revises: d7a3c9e1f024
Create Date: 2026-12-01 04:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e5b81f2ac937"
down_revision: str | None = "d7a3c9e1f024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("minimax_account", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_column("minimax_account")
