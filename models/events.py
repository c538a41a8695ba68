"""The outbox: events written in the transaction of the change they report, and the feed over them.

A tenant's events are numbered from its row in `event_counters`, taken with an upsert that
holds the row's lock until the transaction ends. Writers of one tenant therefore commit in
sequence order, so a reader that has seen sequence N has seen every event up to N: a cursor
never skips an event that commits later with a lower number. The lock is taken last in a
write (callers record events after their own writes), so it is held only for the commit.
Functions flush but never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, Table, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.schema import Base, Event, EventCounter, Tenant, utcnow

EVENT_TYPES: tuple[str, ...] = (
    "contact.created",
    "contact.updated",
    "contact.merged",
    "contact.unmerged",
    "contact.deleted",
    "message.received",
    "webhook_endpoint.disabled",
)
EVENTS: Table = Base.metadata.tables["events"]
COUNTERS: Table = Base.metadata.tables["event_counters"]


class UnknownEventTypeError(ValueError):
    def __init__(self, event_type: str) -> None:
        super().__init__(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
        self.event_type = event_type


class InvalidEventCursorError(ValueError):
    """A cursor that names no position in the tenant's feed: unknown, or older than retention."""

    def __init__(
        self,
        cursor: str,
        *,
        oldest_cursor: str,
        oldest_sequence: int | None,
        oldest_at: datetime | None,
        retention_days: float,
    ) -> None:
        if oldest_sequence is None:
            reach = "the feed holds no events now"
        else:
            reach = f"the oldest event kept is sequence {oldest_sequence}"
            if oldest_at is not None:
                reach += f", written at {oldest_at.isoformat(timespec='seconds')}"
        super().__init__(
            f"cursor {cursor!r} is unknown or has expired: events are kept {retention_days:g} "
            f"days and {reach}; start again from cursor {oldest_cursor!r} or with no cursor"
        )
        self.cursor = cursor
        self.oldest_cursor = oldest_cursor
        self.oldest_sequence = oldest_sequence
        self.oldest_at = oldest_at
        self.retention_days = retention_days


@dataclass(frozen=True)
class NewEvent:
    type: str
    data: Mapping[str, Any]


@dataclass(frozen=True)
class FeedPage:
    events: list[Event]
    next_cursor: str


def events_of(tenant_id: uuid.UUID) -> Select[Event]:
    return select(Event).where(Event.tenant_id == tenant_id)


def record_event(
    session: Session, *, tenant_id: uuid.UUID, type: str, data: Mapping[str, Any]
) -> None:
    """One event, in the caller's transaction: it commits or rolls back with the change."""
    record_events(session, tenant_id=tenant_id, events=[NewEvent(type, data)])


def record_events(session: Session, *, tenant_id: uuid.UUID, events: Sequence[NewEvent]) -> None:
    """Several events of one tenant: one counter update and one multi-row insert."""
    if not events:
        return
    for event in events:
        if event.type not in EVENT_TYPES:
            raise UnknownEventTypeError(event.type)
    last = _allocate(session, tenant_id=tenant_id, count=len(events))
    first = last - len(events) + 1
    now = utcnow()
    session.execute(
        insert(EVENTS),
        [
            {
                "id": uuid.uuid4(),
                "tenant_id": tenant_id,
                "sequence": first + offset,
                "type": event.type,
                "created_at": now,
                "data": dict(event.data),
            }
            for offset, event in enumerate(events)
        ],
    )


def _allocate(session: Session, *, tenant_id: uuid.UUID, count: int) -> int:
    """Take `count` sequence numbers; returns the last. Locks the tenant's counter row."""
    dialect = session.get_bind().dialect.name
    make_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        make_insert(COUNTERS)
        .values(tenant_id=tenant_id, last_sequence=count, pruned_through=0)
        .on_conflict_do_update(
            index_elements=[COUNTERS.c.tenant_id],
            set_={"last_sequence": COUNTERS.c.last_sequence + count},
        )
        .returning(COUNTERS.c.last_sequence)
    )
    last: int = session.execute(statement).scalar_one()
    return last


def _counter(session: Session, *, tenant_id: uuid.UUID) -> tuple[int, int]:
    row = session.execute(
        select(EventCounter.last_sequence, EventCounter.pruned_through).where(
            EventCounter.tenant_id == tenant_id
        )
    ).one_or_none()
    return (0, 0) if row is None else (row.last_sequence, row.pruned_through)


def last_sequence(session: Session, *, tenant_id: uuid.UUID) -> int:
    """The tenant's last committed sequence: every event up to it is visible."""
    return _counter(session, tenant_id=tenant_id)[0]


def list_events(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    after: str | None,
    limit: int,
    types: Sequence[str] = (),
    retention_days: float,
) -> FeedPage:
    """The tenant's events after `after`, in sequence order, and the cursor to go on from.

    The counter is read first: every event up to its value has committed, so the events
    read next are exactly those, and the cursor can move to it even when `types` matched
    none of them.
    """
    for event_type in types:
        if event_type not in EVENT_TYPES:
            raise UnknownEventTypeError(event_type)
    last, pruned_through = _counter(session, tenant_id=tenant_id)
    position: int | None = pruned_through
    if after is not None:
        position = _position(after)
        if position is None or not pruned_through <= position <= last:
            oldest = session.execute(
                select(Event.sequence, Event.created_at)
                .where(Event.tenant_id == tenant_id)
                .order_by(Event.sequence)
                .limit(1)
            ).one_or_none()
            raise InvalidEventCursorError(
                after,
                oldest_cursor=str(pruned_through),
                oldest_sequence=oldest.sequence if oldest else None,
                oldest_at=oldest.created_at if oldest else None,
                retention_days=retention_days,
            )
    statement = (
        events_of(tenant_id)
        .where(Event.sequence > position, Event.sequence <= last)
        .order_by(Event.sequence)
        .limit(limit)
    )
    if types:
        statement = statement.where(Event.type.in_(list(types)))
    events = list(session.scalars(statement))
    end = events[-1].sequence if len(events) == limit else last
    return FeedPage(events=events, next_cursor=str(end))


def _position(cursor: str) -> int | None:
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18:
        return None
    return int(cursor)


def prune_tenant_events(session: Session, *, tenant_id: uuid.UUID, before: datetime) -> int:
    """Remove the tenant's events written before `before` (a prefix of its sequence), with
    their deliveries; returns how many went. Cursors below what is left then expire."""
    cut = session.scalar(
        select(func.max(Event.sequence)).where(
            Event.tenant_id == tenant_id, Event.created_at < before
        )
    )
    if cut is None:
        return 0
    session.execute(
        update(EventCounter)
        .where(EventCounter.tenant_id == tenant_id, EventCounter.pruned_through < cut)
        .values(pruned_through=cut)
    )
    result = session.execute(
        delete(Event).where(Event.tenant_id == tenant_id, Event.sequence <= cut)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def tenants_with_events_before(session: Session, *, before: datetime) -> list[uuid.UUID]:
    """A sweep across tenants by design: it reads ids only, each prune is tenant-scoped."""
    return list(
        session.scalars(select(Event.tenant_id).where(Event.created_at < before).distinct())
    )


def camel_name(field: str) -> str:
    """A model attribute as the API spells it: `channel_preference` -> `channelPreference`."""
    head, *rest = field.split("_")
    return head + "".join(part.title() for part in rest)


def record_contact_updated(
    session: Session, *, tenant_id: uuid.UUID, contact_id: uuid.UUID, changed: Sequence[str]
) -> None:
    """`contact.updated` naming the fields that changed; a write that changed none is no event."""
    if changed:
        record_event(
            session,
            tenant_id=tenant_id,
            type="contact.updated",
            data={"contactId": str(contact_id), "changed": sorted(map(camel_name, changed))},
        )


@dataclass(frozen=True)
class ReceivedMessage:
    """A message a worker batch recorded, with what its `message.received` event tells."""

    message_id: uuid.UUID
    contact_id: uuid.UUID
    channel: str
    provider_message_id: str
    received_at: datetime
    body: str | None


def record_ingestion_events(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    created: Sequence[uuid.UUID],
    updated: Mapping[uuid.UUID, Iterable[str]],
    received: Sequence[ReceivedMessage],
    merged: Sequence[NewEvent] = (),
) -> None:
    """A worker batch's events in one insert: contacts made, contacts filled in, each message
    recorded, then the batch's merges (after the creation of any contact they merge away).
    The batch passes what it already holds, so nothing is read back."""
    events = [NewEvent("contact.created", {"contactId": str(c)}) for c in created]
    for contact_id, fields in updated.items():
        if fields:
            names = sorted(set(map(camel_name, fields)))
            events.append(
                NewEvent("contact.updated", {"contactId": str(contact_id), "changed": names})
            )
    include_body = bool(received) and bool(
        session.scalar(select(Tenant.events_include_body).where(Tenant.id == tenant_id))
    )
    for message in received:
        data: dict[str, Any] = {
            "messageId": str(message.message_id),
            "contactId": str(message.contact_id),
            "channel": message.channel,
            "providerMessageId": message.provider_message_id,
            "receivedAt": _rfc3339(message.received_at),
        }
        if include_body:
            data["body"] = message.body
        events.append(NewEvent("message.received", data))
    events.extend(merged)
    record_events(session, tenant_id=tenant_id, events=events)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_body(event: Event) -> dict[str, Any]:
    """An event as the feed and webhooks show it."""
    return {
        "id": str(event.id),
        "type": event.type,
        "sequence": event.sequence,
        "createdAt": _rfc3339(event.created_at),
        "data": event.data,
    }
