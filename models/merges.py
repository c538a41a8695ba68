"""Merging two contacts of one person, and undoing it: the `contact_merges` table's life.

The older contact survives. The merged contact's identities and messages move to it; it keeps
every value it has and gains what it lacks (status, role and language only where its own are
still the defaults); the merged contact stays, marked merged, out of every list. The merge row
records what moved and what was kept or gained, so that an undo puts back exactly that and
leaves what arrived since with the survivor.

Both contacts are locked in id order (the one fixed order every merge and undo takes), so two
merges never deadlock; the identities' unique index stays the judge of who holds what.
Functions flush but never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models import identities
from models.contacts import (
    ContactError,
    ContactNotFoundError,
    contacts_of,
    kept_contacts_of,
    resolve_contact,
)
from models.events import NewEvent, camel_name, record_event
from models.schema import Contact, ContactIdentity, ContactMerge, Message, utcnow

API_REASON = "api"
# Fields the survivor fills when it has none; and those it takes only over its own default.
FILLED_FIELDS = ("email", "phone", "channel_preference", "referral_source")
DEFAULTED_FIELDS = {"status": "prospect", "role": "prospect", "language": "en"}
# Fields where the survivor's own value always stands; the merged one is recorded as kept over.
KEPT_FIELDS = ("name", "source", *FILLED_FIELDS, *DEFAULTED_FIELDS)


class MergeError(ContactError):
    """A merge or undo that cannot be done as asked; the message says why."""


class SameContactError(MergeError):
    def __init__(self, contact_id: uuid.UUID) -> None:
        super().__init__(f"contact {contact_id} cannot be merged into itself")
        self.contact_id = contact_id


class MergeNotFoundError(MergeError, LookupError):
    def __init__(self, merge_id: uuid.UUID | str) -> None:
        super().__init__(f"no merge {merge_id}")
        self.merge_id = merge_id


class UndoConflictError(MergeError):
    """The merge can no longer be undone as asked (undone already, merged again, or an
    identity it moved now belongs to another contact)."""


def _lock_live(
    session: Session, *, tenant_id: uuid.UUID, contact_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Contact]:
    rows = session.scalars(
        contacts_of(tenant_id)
        .where(Contact.id.in_(contact_ids))
        .order_by(Contact.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {row.id: row for row in rows}


def older_first(contacts: Sequence[Contact]) -> list[Contact]:
    """Who survives a merge: the oldest (ties broken by id, so every writer agrees)."""
    return sorted(contacts, key=lambda c: (c.created_at, c.id))


def _is_stand_in(contact: Contact) -> bool:
    """A name that only stands in for one: empty, or the contact's own phone or email."""
    return not contact.name.strip() or contact.name in (contact.phone, contact.email)


def merge_contacts(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    survivor_id: uuid.UUID,
    merged_id: uuid.UUID,
    reason: str,
    now: datetime | None = None,
    deferred_events: list[NewEvent] | None = None,
) -> ContactMerge:
    """Merge `merged_id` into `survivor_id` (both live contacts of the tenant) and record it.

    With `deferred_events`, the contact.merged event is appended there instead of written:
    a worker batch writes it after the batch's own contact.created events, so a feed never
    names a contact as merged before it has told of its creation."""
    if survivor_id == merged_id:
        raise SameContactError(survivor_id)
    locked = _lock_live(session, tenant_id=tenant_id, contact_ids=[survivor_id, merged_id])
    for wanted in (survivor_id, merged_id):
        if wanted not in locked:
            raise ContactNotFoundError(wanted)
    survivor, merged = locked[survivor_id], locked[merged_id]
    now = now or utcnow()
    identity_ids, message_ids = _move_all(
        session, tenant_id=tenant_id, source=merged.id, target=survivor.id
    )
    gained, kept = _combine(survivor, merged)
    merged.merged_into_id = survivor.id
    merged.merged_at = now
    merged.updated_at = now
    survivor.updated_at = max(now, survivor.updated_at)
    record = ContactMerge(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        survivor_id=survivor.id,
        merged_id=merged.id,
        reason=reason[:200],
        identity_ids=[str(i) for i in identity_ids],
        message_ids=[str(m) for m in message_ids],
        kept=kept,
        gained=gained,
        created_at=now,
    )
    session.add(record)
    session.flush()
    event = NewEvent(
        "contact.merged",
        {
            "contactId": str(survivor.id),
            "mergedContactId": str(merged.id),
            "mergeId": str(record.id),
            "reason": record.reason,
            "gained": sorted(map(camel_name, gained)),
        },
    )
    if deferred_events is None:
        record_event(session, tenant_id=tenant_id, type=event.type, data=event.data)
    else:
        deferred_events.append(event)
    return record


def _move_all(
    session: Session, *, tenant_id: uuid.UUID, source: uuid.UUID, target: uuid.UUID
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Every identity (history too) and message of `source` moves to `target`; returns their ids.

    Moving a row changes its contact, never its (kind, value): the unique index is untouched.
    Both contacts are locked, and so is the tenant, so what is read is what moves.
    """
    moved: list[list[uuid.UUID]] = []
    for table in (ContactIdentity, Message):
        owned = (table.tenant_id == tenant_id, table.contact_id == source)
        moved.append(list(session.scalars(select(table.id).where(*owned))))
        session.execute(
            update(table).where(*owned).values(contact_id=target),
            execution_options={"synchronize_session": False},
        )
    return moved[0], moved[1]


def _combine(survivor: Contact, merged: Contact) -> tuple[dict[str, Any], dict[str, Any]]:
    """Give the survivor what it lacks; return (gained: field -> {value, previous}, kept:
    field -> the merged contact's value the survivor kept its own over)."""
    gained: dict[str, Any] = {}
    kept: dict[str, Any] = {}
    for field in KEPT_FIELDS:
        mine, theirs = getattr(survivor, field), getattr(merged, field)
        if theirs is None or mine == theirs:
            continue
        lacking = mine is None
        if field in DEFAULTED_FIELDS:
            lacking = mine == DEFAULTED_FIELDS[field] and theirs != DEFAULTED_FIELDS[field]
        elif field == "name":
            lacking = _is_stand_in(survivor) and not _is_stand_in(merged)
        if lacking:
            gained[field] = {"value": theirs, "previous": mine}
            setattr(survivor, field, theirs)
        else:
            kept[field] = theirs
    if "status" in gained:
        gained["applied_at"] = {
            "value": _iso(merged.applied_at),
            "previous": _iso(survivor.applied_at),
        }
        survivor.applied_at = merged.applied_at
    return gained, kept


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _from_iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def list_merges(
    session: Session, *, tenant_id: uuid.UUID, contact_id: uuid.UUID
) -> list[ContactMerge]:
    """The merges into the contact the id names, newest first, undone ones included."""
    contact = resolve_contact(session, tenant_id=tenant_id, contact_id=contact_id)
    return list(
        session.scalars(
            select(ContactMerge)
            .where(ContactMerge.tenant_id == tenant_id, ContactMerge.survivor_id == contact.id)
            .order_by(ContactMerge.created_at.desc(), ContactMerge.id.desc())
        )
    )


def undo_merge(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    merge_id: uuid.UUID,
    now: datetime | None = None,
) -> Contact:
    """Bring the merged contact back with the identities and messages it had; return it.

    `contact_id` names the survivor (or an id merged into it). Raises UndoConflictError when
    the undo can no longer be done as asked.
    """
    record = _merge_to_undo(session, tenant_id=tenant_id, contact_id=contact_id, merge_id=merge_id)
    survivor, merged = _lock_pair(session, record=record)
    now = now or utcnow()
    _move_back(session, record=record, survivor=survivor, merged=merged)
    _restore_values(record, survivor)
    merged.merged_into_id = None
    merged.merged_at = None
    merged.updated_at = now
    survivor.updated_at = max(now, survivor.updated_at)
    record.undone_at = now
    session.flush()
    # An identity retired while on the survivor comes back retired: primaries follow on both.
    _sync_primaries(session, survivor)
    _sync_primaries(session, merged)
    session.flush()
    record_event(
        session,
        tenant_id=tenant_id,
        type="contact.unmerged",
        data={
            "contactId": str(survivor.id),
            "restoredContactId": str(merged.id),
            "mergeId": str(record.id),
        },
    )
    return merged


def _merge_to_undo(
    session: Session, *, tenant_id: uuid.UUID, contact_id: uuid.UUID, merge_id: uuid.UUID
) -> ContactMerge:
    """The merge, locked, if it is one into the contact the id names and not undone yet."""
    current = resolve_contact(session, tenant_id=tenant_id, contact_id=contact_id)
    record = session.scalars(
        select(ContactMerge)
        .where(ContactMerge.tenant_id == tenant_id, ContactMerge.id == merge_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if record is None:
        raise MergeNotFoundError(merge_id)
    if record.survivor_id != current.id:
        try:
            survivor_now = resolve_contact(
                session, tenant_id=tenant_id, contact_id=record.survivor_id
            )
        except ContactNotFoundError:
            raise MergeNotFoundError(merge_id) from None
        if survivor_now.id != current.id:  # a merge of some other contact
            raise MergeNotFoundError(merge_id)
        raise UndoConflictError(
            f"contact {record.survivor_id} was merged into contact {current.id} since; "
            "undo that merge first"
        )
    if record.undone_at is not None:
        raise UndoConflictError(f"merge {record.id} was already undone")
    return record


def _lock_pair(session: Session, *, record: ContactMerge) -> tuple[Contact, Contact]:
    """The survivor and the merged contact, locked in id order, still as the merge left them."""
    rows = {
        row.id: row
        for row in session.scalars(
            kept_contacts_of(record.tenant_id)
            .where(Contact.id.in_([record.survivor_id, record.merged_id]))
            .order_by(Contact.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }
    survivor, merged = rows.get(record.survivor_id), rows.get(record.merged_id)
    if survivor is None or survivor.merged_into_id is not None:
        raise UndoConflictError(f"contact {record.survivor_id} is no longer live")
    if merged is None or merged.merged_into_id != survivor.id:
        raise UndoConflictError(f"contact {record.merged_id} is no longer merged into it")
    return survivor, merged


def _move_back(
    session: Session, *, record: ContactMerge, survivor: Contact, merged: Contact
) -> None:
    identity_ids = [uuid.UUID(i) for i in record.identity_ids]
    if identity_ids:
        moved = list(
            session.scalars(
                select(ContactIdentity).where(
                    ContactIdentity.tenant_id == record.tenant_id,
                    ContactIdentity.id.in_(identity_ids),
                )
            )
        )
        _refuse_lost_identities(session, record=record, survivor=survivor, moved=moved)
        session.execute(
            update(ContactIdentity)
            .where(
                ContactIdentity.tenant_id == record.tenant_id,
                ContactIdentity.id.in_(identity_ids),
            )
            .values(contact_id=merged.id),
            execution_options={"synchronize_session": False},
        )
    message_ids = [uuid.UUID(m) for m in record.message_ids]
    if message_ids:
        session.execute(
            update(Message)
            .where(
                Message.tenant_id == record.tenant_id,
                Message.id.in_(message_ids),
                Message.contact_id == survivor.id,
            )
            .values(contact_id=merged.id),
            execution_options={"synchronize_session": False},
        )


def _refuse_lost_identities(
    session: Session, *, record: ContactMerge, survivor: Contact, moved: Sequence[ContactIdentity]
) -> None:
    """An identity the merged contact brought that has left the survivor, or was retired since
    and is now another contact's, cannot come back with it: the undo is no longer as asked."""
    for row in moved:
        if row.contact_id != survivor.id:
            raise UndoConflictError(
                f"identity {row.kind} {row.value} is now on contact {row.contact_id}"
            )
    since = [
        (row.kind, row.value)
        for row in moved
        if row.retired_at is not None and row.retired_at >= record.created_at
    ]
    for (kind, value), holder in identities.holders(
        session, tenant_id=record.tenant_id, keys=since
    ).items():
        raise UndoConflictError(f"identity {kind} {value} is now on contact {holder}")


def _restore_values(record: ContactMerge, survivor: Contact) -> None:
    """What the survivor gained goes back to what it had, unless it was changed since."""
    for field, change in record.gained.items():
        if field == "applied_at":
            continue
        if getattr(survivor, field) == change["value"]:
            setattr(survivor, field, change["previous"])
            if field == "status" and "applied_at" in record.gained:
                survivor.applied_at = _from_iso(record.gained["applied_at"]["previous"])


def _sync_primaries(session: Session, contact: Contact) -> None:
    """The primary phone and email are identities the contact holds: one it no longer holds
    falls back to its oldest other one, or to none."""
    for kind in identities.PRIMARY_KINDS:
        value = getattr(contact, kind)
        if value is not None:
            key = (kind, value)
            if identities.holders(session, tenant_id=contact.tenant_id, keys=[key]).get(key) == (
                contact.id
            ):
                continue
        fallback = identities.first_active(
            session, tenant_id=contact.tenant_id, contact_id=contact.id, kind=kind
        )
        setattr(contact, kind, fallback)


def sync_primaries(session: Session, *, contact: Contact) -> None:
    """Public for the resolver: after identities were retired, the primaries follow."""
    _sync_primaries(session, contact)
    session.flush()
