"""API keys get a name and a last-used time; tenants keep replaced channel secrets a while.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Nullable columns only: existing rows need no default, and SQLite adds them in place.
    op.add_column("api_keys", sa.Column("name", sa.String(100), nullable=True))
    op.add_column("api_keys", sa.Column("last_used_at", TS, nullable=True))
    op.add_column("tenants", sa.Column("previous_secrets", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as tenants:
        tenants.drop_column("previous_secrets")
    with op.batch_alter_table("api_keys") as api_keys:
        api_keys.drop_column("last_used_at")
        api_keys.drop_column("name")
