"""tenant_upstream_keys: a tenant's own MiniMax key, encrypted (issue 17 part 2)

Revision ID: a17c2e0f5b31
Revises: 9b2f4c6e8a10
Create Date: 2026-11-30 20:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db

revision: str = "a17c2e0f5b31"
down_revision: str | None = "9b2f4c6e8a10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenant_upstream_keys",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("encrypted_key", sa.LargeBinary(), nullable=False),
        sa.Column("fingerprint", sa.String(length=16), nullable=False),
        sa.Column("base_url", sa.String(length=2048), nullable=False),
        sa.Column("rate_limits", sa.JSON(), nullable=False),
        sa.Column("updated_at", service.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_upstream_keys_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_upstream_keys")),
    )


def downgrade() -> None:
    op.drop_table("tenant_upstream_keys")
