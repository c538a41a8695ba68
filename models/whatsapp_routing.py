"""The shared WhatsApp route's tables: which tenant registered a Meta phone number id, and the
changes that came for a number nobody had registered yet.

These are operator tables: the shared route has no tenant in its path, so a lookup starts from
the phone number id Meta sends, and yields the tenant.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.schema import UnroutedWhatsAppChange, WhatsAppPhoneNumber, utcnow

PHONE_NUMBER_ID_KEY = "whatsapp_phone_number_id"
# Meta's phone number ids are numeric Graph API ids (15-16 digits today).
_PHONE_NUMBER_ID = re.compile(r"[0-9]{1,64}")


class PhoneNumberIdError(ValueError):
    """A `whatsapp_phone_number_id` that cannot be registered; the text is one line."""


class InvalidPhoneNumberIdError(PhoneNumberIdError):
    pass


class PhoneNumberIdTakenError(PhoneNumberIdError):
    """The number is another tenant's: a change for it must have one tenant to go to."""


def parse_phone_number_ids(value: str) -> tuple[str, ...]:
    """`"123,456"` -> ("123", "456"); empty means none. Raises InvalidPhoneNumberIdError."""
    ids = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    for phone_number_id in ids:
        if not _PHONE_NUMBER_ID.fullmatch(phone_number_id):
            raise InvalidPhoneNumberIdError(
                f"{PHONE_NUMBER_ID_KEY} takes Meta's numeric phone number id "
                f"(comma-separated for several), not {phone_number_id[:80]!r}"
            )
    return ids


def set_phone_number_ids(
    session: Session, *, tenant_id: uuid.UUID, phone_number_ids: Sequence[str]
) -> None:
    """Make `phone_number_ids` exactly the tenant's registered numbers.

    Raises PhoneNumberIdTakenError, naming the other tenant, when one is registered to it.
    """
    wanted = list(dict.fromkeys(phone_number_ids))
    if wanted:
        taken = session.execute(
            select(WhatsAppPhoneNumber.phone_number_id, WhatsAppPhoneNumber.tenant_id)
            .where(
                WhatsAppPhoneNumber.phone_number_id.in_(wanted),
                WhatsAppPhoneNumber.tenant_id != tenant_id,
            )
            .order_by(WhatsAppPhoneNumber.phone_number_id)
        ).first()
        if taken is not None:
            raise PhoneNumberIdTakenError(
                f"{PHONE_NUMBER_ID_KEY} {taken.phone_number_id} is already registered "
                f"to tenant {taken.tenant_id}"
            )
    session.execute(
        delete(WhatsAppPhoneNumber).where(
            WhatsAppPhoneNumber.tenant_id == tenant_id,
            WhatsAppPhoneNumber.phone_number_id.not_in(wanted),
        )
    )
    held = set(phone_number_ids_of(session, tenant_id=tenant_id))
    session.add_all(
        WhatsAppPhoneNumber(phone_number_id=p, tenant_id=tenant_id) for p in wanted if p not in held
    )
    try:
        session.flush()
    except IntegrityError:
        # Another tenant registered it between the check above and this insert.
        raise PhoneNumberIdTakenError(
            f"{PHONE_NUMBER_ID_KEY} {', '.join(wanted)}: registered by another tenant meanwhile"
        ) from None


def phone_number_ids_of(session: Session, *, tenant_id: uuid.UUID) -> list[str]:
    return list(
        session.scalars(
            select(WhatsAppPhoneNumber.phone_number_id)
            .where(WhatsAppPhoneNumber.tenant_id == tenant_id)
            .order_by(WhatsAppPhoneNumber.phone_number_id)
        )
    )


def tenant_of_phone_number_id(session: Session, *, phone_number_id: str) -> uuid.UUID | None:
    """The tenant that registered the number, if any (the primary key makes it one)."""
    found: uuid.UUID | None = session.scalar(
        select(WhatsAppPhoneNumber.tenant_id).where(
            WhatsAppPhoneNumber.phone_number_id == phone_number_id
        )
    )
    return found


def tenants_of_phone_number_ids(
    session: Session, *, phone_number_ids: Sequence[str]
) -> dict[str, uuid.UUID]:
    """The registered ones among `phone_number_ids`, each with its tenant."""
    if not phone_number_ids:
        return {}
    rows = session.execute(
        select(WhatsAppPhoneNumber.phone_number_id, WhatsAppPhoneNumber.tenant_id).where(
            WhatsAppPhoneNumber.phone_number_id.in_(list(phone_number_ids))
        )
    )
    return {row.phone_number_id: row.tenant_id for row in rows}


@dataclass(frozen=True)
class NewUnroutedChange:
    phone_number_id: str
    entry_id: str | None
    change: dict[str, Any]
    change_key: str
    message_count: int


def store_unrouted(session: Session, *, changes: Sequence[NewUnroutedChange]) -> int:
    """Keep the changes; one already kept under its key (a redelivery) is skipped. Returns the
    number newly kept."""
    if not changes:
        return 0
    now = utcnow()
    rows = [
        {
            "id": uuid.uuid4(),
            "phone_number_id": c.phone_number_id,
            "entry_id": c.entry_id,
            "change": c.change,
            "change_key": c.change_key,
            "message_count": c.message_count,
            "received_at": now,
        }
        for c in {c.change_key: c for c in changes}.values()
    ]
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(UnroutedWhatsAppChange.__table__)
        .on_conflict_do_nothing(index_elements=["change_key"])
        .returning(UnroutedWhatsAppChange.__table__.c.id)
    )
    return len(session.execute(stmt, rows).all())


def unrouted_changes(session: Session) -> list[UnroutedWhatsAppChange]:
    """Changes still waiting for a tenant, oldest first."""
    return list(
        session.scalars(
            select(UnroutedWhatsAppChange)
            .where(UnroutedWhatsAppChange.routed_at.is_(None))
            .order_by(UnroutedWhatsAppChange.received_at, UnroutedWhatsAppChange.id)
        )
    )


def count_unrouted(session: Session) -> int:
    """How many changes wait for a tenant: an operator's figure, for /metrics."""
    return (
        session.scalar(
            select(func.count())
            .select_from(UnroutedWhatsAppChange)
            .where(UnroutedWhatsAppChange.routed_at.is_(None))
        )
        or 0
    )


def lock_unrouted_changes(
    session: Session, *, change_ids: Sequence[uuid.UUID]
) -> list[UnroutedWhatsAppChange]:
    """The unrouted changes (routed since or not) among `change_ids`, locked until the
    transaction ends, so that two replays cannot route one change twice."""
    if not change_ids:
        return []
    return list(
        session.scalars(
            select(UnroutedWhatsAppChange)
            .where(UnroutedWhatsAppChange.id.in_(list(change_ids)))
            .with_for_update()
        )
    )


def mark_routed(
    session: Session,
    *,
    change: UnroutedWhatsAppChange,
    tenant_id: uuid.UUID,
    now: datetime | None = None,
) -> None:
    """The change went to `tenant_id`; kept (no longer listed) so its key still dedupes."""
    change.routed_at = now or utcnow()
    change.routed_tenant_id = tenant_id
    session.flush()
