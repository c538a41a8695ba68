"""Identities of every kind, one per live contact of a tenant, and contacts merged into others.

`contact_identities` becomes `(kind, value, retired_at)`: the old channel sender ids move over
(kind = channel), and every contact's phone and email become identities too, retired where the
contact was deleted. The contacts' own phone and email unique indexes go: the identities' index
is the one judge from here on. Contacts gain `merged_into_id`/`merged_at`; `contact_merges`
records each merge for its undo.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ACTIVE = sa.text("retired_at IS NULL")
LIVE = sa.text("deleted_at IS NULL")
BATCH = 5_000

_contacts = sa.table(
    "contacts",
    sa.column("id", sa.Uuid()),
    sa.column("tenant_id", sa.Uuid()),
    sa.column("phone", sa.String()),
    sa.column("email", sa.String()),
    sa.column("created_at", TS),
    sa.column("deleted_at", TS),
)
_old = sa.table(
    "contact_identities_0001",
    sa.column("id", sa.Uuid()),
    sa.column("tenant_id", sa.Uuid()),
    sa.column("contact_id", sa.Uuid()),
    sa.column("channel", sa.String()),
    sa.column("sender_id", sa.String()),
    sa.column("created_at", TS),
)
_new = sa.table(
    "contact_identities",
    sa.column("id", sa.Uuid()),
    sa.column("tenant_id", sa.Uuid()),
    sa.column("contact_id", sa.Uuid()),
    sa.column("kind", sa.String()),
    sa.column("value", sa.String()),
    sa.column("created_at", TS),
    sa.column("retired_at", TS),
)


def _create_identities() -> None:
    op.create_table(
        "contact_identities",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("contact_id", sa.Uuid(), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("value", sa.String(320), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("retired_at", TS, nullable=True),
    )
    op.create_index("ix_contact_identities_contact_id", "contact_identities", ["contact_id"])
    op.create_index(
        "uq_contact_identities_active",
        "contact_identities",
        ["tenant_id", "kind", "value"],
        unique=True,
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )


def _insert(rows: list[dict[str, Any]]) -> None:
    if rows:
        op.get_bind().execute(sa.insert(_new), rows)


def _copy_identities() -> None:
    bind = op.get_bind()
    rows: list[dict[str, Any]] = []
    old = sa.select(
        _old.c.tenant_id,
        _old.c.contact_id,
        _old.c.channel,
        _old.c.sender_id,
        _old.c.created_at,
        _contacts.c.deleted_at,
    ).join(_contacts, _contacts.c.id == _old.c.contact_id)
    for row in bind.execute(old):
        rows.append(
            {
                "id": uuid.uuid4(),
                "tenant_id": row.tenant_id,
                "contact_id": row.contact_id,
                "kind": row.channel,
                "value": row.sender_id,
                "created_at": row.created_at,
                "retired_at": row.deleted_at,
            }
        )
        if len(rows) >= BATCH:
            _insert(rows)
            rows = []
    contacts = sa.select(_contacts).where(
        sa.or_(_contacts.c.phone.is_not(None), _contacts.c.email.is_not(None))
    )
    for row in bind.execute(contacts):
        for kind in ("phone", "email"):
            value = getattr(row, kind)
            if value is None:
                continue
            rows.append(
                {
                    "id": uuid.uuid4(),
                    "tenant_id": row.tenant_id,
                    "contact_id": row.id,
                    "kind": kind,
                    "value": value,
                    "created_at": row.created_at,
                    "retired_at": row.deleted_at,
                }
            )
        if len(rows) >= BATCH:
            _insert(rows)
            rows = []
    _insert(rows)


def upgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.add_column(sa.Column("merged_into_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("merged_at", TS, nullable=True))
        batch.create_foreign_key(
            "fk_contacts_merged_into_id_contacts", "contacts", ["merged_into_id"], ["id"]
        )
    op.drop_index("uq_contacts_tenant_phone_live", table_name="contacts")
    op.drop_index("uq_contacts_tenant_email_live", table_name="contacts")

    op.drop_index("uq_contact_identities_sender", table_name="contact_identities")
    op.drop_index("ix_contact_identities_contact_id", table_name="contact_identities")
    op.rename_table("contact_identities", "contact_identities_0001")
    _create_identities()
    _copy_identities()
    op.drop_table("contact_identities_0001")

    op.create_table(
        "contact_merges",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("survivor_id", sa.Uuid(), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("merged_id", sa.Uuid(), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("identity_ids", sa.JSON(), nullable=False),
        sa.Column("message_ids", sa.JSON(), nullable=False),
        sa.Column("kept", sa.JSON(), nullable=False),
        sa.Column("gained", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("undone_at", TS, nullable=True),
    )
    op.create_index(
        "ix_contact_merges_survivor", "contact_merges", ["tenant_id", "survivor_id", "created_at"]
    )
    op.create_index("ix_contact_merges_merged", "contact_merges", ["tenant_id", "merged_id"])


def downgrade() -> None:
    """Back to sender ids only; merges are forgotten (merged contacts stay out of sight as
    deleted ones would not: downgrading after merges is a restore-from-backup matter)."""
    op.drop_table("contact_merges")
    op.rename_table("contact_identities", "contact_identities_0002")
    op.drop_index("uq_contact_identities_active", table_name="contact_identities_0002")
    op.drop_index("ix_contact_identities_contact_id", table_name="contact_identities_0002")
    op.create_table(
        "contact_identities",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("contact_id", sa.Uuid(), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("sender_id", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.execute(
        "INSERT INTO contact_identities "
        "(id, tenant_id, contact_id, channel, sender_id, created_at) "
        "SELECT id, tenant_id, contact_id, kind, value, created_at FROM contact_identities_0002 "
        "WHERE kind IN ('whatsapp', 'telegram') AND retired_at IS NULL"
    )
    op.drop_table("contact_identities_0002")
    op.create_index("ix_contact_identities_contact_id", "contact_identities", ["contact_id"])
    op.create_index(
        "uq_contact_identities_sender",
        "contact_identities",
        ["tenant_id", "channel", "sender_id"],
        unique=True,
    )
    for column in ("phone", "email"):
        op.create_index(
            f"uq_contacts_tenant_{column}_live",
            "contacts",
            ["tenant_id", column],
            unique=True,
            postgresql_where=LIVE,
            sqlite_where=LIVE,
        )
    with op.batch_alter_table("contacts") as batch:
        batch.drop_constraint("fk_contacts_merged_into_id_contacts", type_="foreignkey")
        batch.drop_column("merged_at")
        batch.drop_column("merged_into_id")
