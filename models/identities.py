"""The `contact_identities` table's life: which contact holds an identity, adding and retiring.

An identity is active until retired; the unique index over active rows is what keeps one
identity on at most one contact of a tenant. Active rows always belong to a live contact: a
soft delete retires them and a merge moves them. Functions flush but never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_, select, update
from sqlalchemy.orm import Session

from models.schema import ContactIdentity, utcnow

KINDS: tuple[str, ...] = ("phone", "email", "whatsapp", "whatsapp_bsuid", "telegram")
# The contact's own columns that mirror one identity each: its primary phone and email.
PRIMARY_KINDS: tuple[str, ...] = ("phone", "email")

Key = tuple[str, str]  # (kind, value)


def active_identities_of(tenant_id: uuid.UUID) -> Select[ContactIdentity]:
    return select(ContactIdentity).where(
        ContactIdentity.tenant_id == tenant_id, ContactIdentity.retired_at.is_(None)
    )


def matching(keys: Iterable[Key]) -> Any:
    """A WHERE clause for active rows with any of `keys`, grouped by kind so indexes serve it."""
    by_kind: dict[str, set[str]] = {}
    for kind, value in keys:
        by_kind.setdefault(kind, set()).add(value)
    return or_(
        *(
            and_(ContactIdentity.kind == kind, ContactIdentity.value.in_(sorted(values)))
            for kind, values in by_kind.items()
        )
    )


def holders(session: Session, *, tenant_id: uuid.UUID, keys: Sequence[Key]) -> dict[Key, uuid.UUID]:
    """The contact holding each of `keys` that any contact holds."""
    if not keys:
        return {}
    rows = session.execute(
        select(ContactIdentity.kind, ContactIdentity.value, ContactIdentity.contact_id).where(
            ContactIdentity.tenant_id == tenant_id,
            ContactIdentity.retired_at.is_(None),
            matching(keys),
        )
    )
    return {(row.kind, row.value): row.contact_id for row in rows}


def list_identities(
    session: Session, *, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> list[ContactIdentity]:
    """The contact's active identities, oldest first."""
    return list(
        session.scalars(
            active_identities_of(tenant_id)
            .where(ContactIdentity.contact_id == contact_id)
            .order_by(ContactIdentity.created_at, ContactIdentity.kind, ContactIdentity.value)
        )
    )


def add_identity(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    kind: str,
    value: str,
    now: datetime | None = None,
) -> ContactIdentity:
    """A new active identity on the contact; the flush raises IntegrityError if it is taken."""
    identity = ContactIdentity(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        contact_id=contact_id,
        kind=kind,
        value=value,
        created_at=now or utcnow(),
    )
    session.add(identity)
    return identity


def retire_identities(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    keys: Sequence[Key] | None = None,
    now: datetime | None = None,
) -> int:
    """Retire the contact's active identities (all of them, or those with `keys`): they stay
    as the contact's history and no longer match, so the values are free for someone else."""
    if keys is not None and not keys:
        return 0
    statement = update(ContactIdentity).where(
        ContactIdentity.tenant_id == tenant_id,
        ContactIdentity.contact_id == contact_id,
        ContactIdentity.retired_at.is_(None),
    )
    if keys is not None:
        statement = statement.where(matching(keys))
    result = session.execute(
        statement.values(retired_at=now or utcnow()),
        execution_options={"synchronize_session": False},
    )
    session.flush()
    return int(getattr(result, "rowcount", 0) or 0)


def first_active(
    session: Session, *, tenant_id: uuid.UUID, contact_id: uuid.UUID, kind: str
) -> str | None:
    """The contact's oldest active identity of `kind`: what its primary falls back to."""
    return session.scalar(
        select(ContactIdentity.value)
        .where(
            ContactIdentity.tenant_id == tenant_id,
            ContactIdentity.contact_id == contact_id,
            ContactIdentity.kind == kind,
            ContactIdentity.retired_at.is_(None),
        )
        .order_by(ContactIdentity.created_at, ContactIdentity.value)
        .limit(1)
    )
