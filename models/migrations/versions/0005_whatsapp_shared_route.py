"""The shared WhatsApp route: tenants' registered phone number ids and unrouted changes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "whatsapp_phone_numbers",
        sa.Column("phone_number_id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_whatsapp_phone_numbers_tenant_id", "whatsapp_phone_numbers", ["tenant_id"])
    op.create_table(
        "unrouted_whatsapp_changes",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("phone_number_id", sa.String(64), nullable=False),
        sa.Column("entry_id", sa.String(64), nullable=True),
        sa.Column("change", sa.JSON(), nullable=False),
        sa.Column("change_key", sa.String(64), nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("routed_at", TS, nullable=True),
        sa.Column("routed_tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id"), nullable=True),
    )
    op.create_index(
        "ix_unrouted_whatsapp_changes_phone_number_id",
        "unrouted_whatsapp_changes",
        ["phone_number_id"],
    )
    op.create_index(
        "uq_unrouted_whatsapp_changes_key",
        "unrouted_whatsapp_changes",
        ["change_key"],
        unique=True,
    )
    op.create_index(
        "ix_unrouted_whatsapp_changes_received", "unrouted_whatsapp_changes", ["received_at"]
    )


def downgrade() -> None:
    op.drop_table("unrouted_whatsapp_changes")
    op.drop_table("whatsapp_phone_numbers")
