"""The initial schema: tenants, API keys, contacts, identities, messages, idempotency keys, nonces.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
LIVE = sa.text("deleted_at IS NULL")
PENDING = sa.text("state = 'pending'")


def _partial(
    name: str, table: str, columns: list[str], where: sa.TextClause, *, unique: bool = False
) -> None:
    op.create_index(name, table, columns, unique=unique, postgresql_where=where, sqlite_where=where)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("region", sa.String(2), nullable=False),
        sa.Column("max_page_size", sa.Integer(), nullable=False),
        sa.Column("secrets", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])

    op.create_table(
        "contacts",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("phone", sa.String(20), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("channel_preference", sa.String(20), nullable=True),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("referral_source", sa.String(300), nullable=True),
        sa.Column("language", sa.String(2), nullable=False),
        sa.Column("applied_at", TS, nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("deleted_at", TS, nullable=True),
    )
    _partial("uq_contacts_tenant_phone_live", "contacts", ["tenant_id", "phone"], LIVE, unique=True)
    _partial("uq_contacts_tenant_email_live", "contacts", ["tenant_id", "email"], LIVE, unique=True)
    _partial("ix_contacts_tenant_created", "contacts", ["tenant_id", "created_at", "id"], LIVE)
    for column in ("status", "role", "channel_preference"):
        short = "channel" if column == "channel_preference" else column
        _partial(
            f"ix_contacts_tenant_{short}_created",
            "contacts",
            ["tenant_id", column, "created_at"],
            LIVE,
        )
    if op.get_bind().dialect.name == "postgresql":
        # Substring search (`ILIKE '%…%'`) on name, email and phone at 100,000 contacts a tenant.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for column in ("name", "email", "phone"):
            op.execute(
                f"CREATE INDEX ix_contacts_{column}_trgm ON contacts "
                f"USING gin ({column} gin_trgm_ops) WHERE deleted_at IS NULL"
            )

    op.create_table(
        "contact_identities",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("contact_id", sa.Uuid(), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("sender_id", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_contact_identities_contact_id", "contact_identities", ["contact_id"])
    op.create_index(
        "uq_contact_identities_sender",
        "contact_identities",
        ["tenant_id", "channel", "sender_id"],
        unique=True,
    )

    op.create_table(
        "messages",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("provider_message_id", sa.String(300), nullable=False),
        sa.Column("contact_id", sa.Uuid(), sa.ForeignKey("contacts.id"), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("media", sa.JSON(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("accepted_at", TS, nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("handled_at", TS, nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
    )
    op.create_index(
        "uq_messages_provider_id",
        "messages",
        ["tenant_id", "channel", "provider_message_id"],
        unique=True,
    )
    op.create_index(
        "ix_messages_contact_received", "messages", ["tenant_id", "contact_id", "received_at"]
    )
    _partial("ix_messages_pending", "messages", ["tenant_id", "accepted_at"], PENDING)
    op.create_index("ix_messages_state", "messages", ["state", "accepted_at"])

    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.JSON(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])

    op.create_table(
        "webhook_nonces",
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("kind", sa.String(20), primary_key=True),
        sa.Column("value", sa.String(200), primary_key=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_webhook_nonces_created_at", "webhook_nonces", ["created_at"])


def downgrade() -> None:
    for table in (
        "webhook_nonces",
        "idempotency_keys",
        "messages",
        "contact_identities",
        "contacts",
        "api_keys",
        "tenants",
    ):
        op.drop_table(table)
