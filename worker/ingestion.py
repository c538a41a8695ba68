"""The ingestion service: a tenant's pending messages resolved to contacts and marked handled.

A batch is resolved in memory from three lookups (identities, then live contacts by phone or
email) and written with a handful of executemany statements, inside a savepoint. Should that
fail (a unique index refused a row another writer took first, or one message is poison), the
batch is redone one message at a time, each in its own savepoint, so that only the faulty
message is charged an attempt. The unique indexes, not the tenant lock, are what finally
keep one tenant from holding two live contacts with the same phone, email or sender id.

`ingest_batch` never commits; `drain_tenant` owns the lock and one transaction per batch.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row, String, Table, bindparam, case, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from channels.base import InboundMessage
from models.db import Database
from models.events import ReceivedMessage, record_ingestion_events
from models.identity import (
    InvalidIdentityError,
    digits_of,
    normalize_email,
    normalize_phone,
    phone_variants,
)
from models.schema import Base, utcnow
from worker.locks import LockLostError, TenantLocks

log = logging.getLogger(__name__)

CONTACTS: Table = Base.metadata.tables["contacts"]
IDENTITIES: Table = Base.metadata.tables["contact_identities"]
MESSAGES: Table = Base.metadata.tables["messages"]

# How often one message is re-read and redone after a unique index refused it: a race with one
# other writer settles on the first re-read; more only means something else is wrong.
RACE_RETRIES = 3
MAX_ERROR_LENGTH = 500


class UnidentifiableSenderError(ValueError):
    """A message with no sender id, phone or email: there is no one to make a contact of."""


@dataclass(frozen=True)
class Sender:
    """Who wrote a message, in the forms contacts are stored and matched in."""

    channel: str
    sender_id: str | None
    phone: str | None
    phones: tuple[str, ...]  # the phone and, on WhatsApp, its known national variants
    email: str | None
    name: str
    display_name: str | None  # what the person calls themselves, if the channel says
    language: str

    @classmethod
    def of(cls, message: InboundMessage) -> Sender:
        phone, phones = _phones(message.phone, whatsapp=message.channel == "whatsapp")
        email = _email(message.email)
        if not (message.sender_id or phone or email):
            raise UnidentifiableSenderError("message has no sender id, phone or email")
        return cls(
            channel=message.channel,
            sender_id=message.sender_id or None,
            phone=phone,
            phones=phones,
            email=email,
            name=_name(message, phone, email),
            display_name=(message.display_name or "").strip()[:300] or None,
            language=_language(message.language),
        )


def _phones(raw: str | None, *, whatsapp: bool) -> tuple[str | None, tuple[str, ...]]:
    """The phone to store and every spelling to match it by.

    Adapters give E.164; a number without its `+` is read as international. On WhatsApp the
    national variants match too, and when the id itself is no longer a possible number
    (Mexico's `+521…`), its current form is the one stored.
    """
    if not raw:
        return None, ()
    try:
        phone: str | None = normalize_phone(raw, international=True)
    except InvalidIdentityError:
        phone = None
    if not whatsapp:
        return phone, (phone,) if phone else ()
    digits = digits_of(raw)
    spelled = phone or ("+" + digits if 8 <= len(digits) <= 15 else None)
    if spelled is None:
        return None, ()
    forms = (spelled, *phone_variants(spelled))
    if phone is None:
        for variant in forms[1:]:
            try:
                phone = normalize_phone(variant)
                break
            except InvalidIdentityError:
                continue
    return phone, forms


def _email(raw: str | None) -> str | None:
    if not raw:
        return None
    try:
        return normalize_email(raw)
    except InvalidIdentityError:
        return None


def _name(message: InboundMessage, phone: str | None, email: str | None) -> str:
    for candidate in (message.display_name, phone, email):
        if candidate and candidate.strip():
            return candidate.strip()[:300]
    if message.username:
        return "@" + message.username.lstrip("@")[:299]
    return f"{message.channel} {message.sender_id}"[:300]


def _language(code: str | None) -> str:
    # Telegram sends IETF tags ("pt-br"); contacts keep the ISO 639-1 part.
    if code:
        primary = code.strip().lower().split("-")[0].split("_")[0]
        if len(primary) == 2 and primary.isalpha():
            return primary
    return "en"


@dataclass
class _Contact:
    id: uuid.UUID
    name: str
    phone: str | None
    email: str | None
    channel_preference: str | None
    is_new: bool = False
    filled: bool = False
    renamed: bool = False
    language: str = "en"  # only written for a new contact
    changed: list[str] = field(default_factory=list)  # what _fill gave it, for its event


@dataclass
class _Identity:
    id: uuid.UUID
    contact_id: uuid.UUID


@dataclass
class BatchOutcome:
    handled: int = 0
    contacts_created: int = 0
    errors: dict[uuid.UUID, str] = field(default_factory=dict)  # message id -> error
    failed: list[uuid.UUID] = field(default_factory=list)  # errors that used the last attempt
    max_attempts_used: int = 0


@dataclass
class _Plan:
    """The writes one group of messages needs, decided in memory."""

    new_contacts: list[_Contact] = field(default_factory=list)
    filled: dict[uuid.UUID, _Contact] = field(default_factory=dict)
    new_identities: list[dict[str, Any]] = field(default_factory=list)
    repointed: list[dict[str, Any]] = field(default_factory=list)
    handled: list[dict[str, Any]] = field(default_factory=list)
    sender_of: dict[uuid.UUID, Sender] = field(default_factory=dict)
    inbound: dict[uuid.UUID, InboundMessage] = field(default_factory=dict)  # for the events


class _Index:
    """The tenant's live contacts and identities that a group of messages can match."""

    def __init__(self) -> None:
        self.by_id: dict[uuid.UUID, _Contact] = {}
        self.by_phone: dict[str, _Contact] = {}
        self.by_email: dict[str, _Contact] = {}
        self.identities: dict[tuple[str, str], _Identity] = {}

    def add(self, contact: _Contact) -> None:
        self.by_id[contact.id] = contact
        if contact.phone:
            self.by_phone.setdefault(contact.phone, contact)
        if contact.email:
            self.by_email.setdefault(contact.email, contact)

    def match(self, sender: Sender) -> tuple[_Contact | None, _Identity | None]:
        """Sender id first, then phone (with its variants), then email; live contacts only."""
        identity = None
        if sender.sender_id:
            identity = self.identities.get((sender.channel, sender.sender_id))
            if identity is not None and identity.contact_id in self.by_id:
                return self.by_id[identity.contact_id], identity
        for phone in sender.phones:
            if phone in self.by_phone:
                return self.by_phone[phone], identity
        if sender.email and sender.email in self.by_email:
            return self.by_email[sender.email], identity
        return None, identity


def _load_index(session: Session, *, tenant_id: uuid.UUID, senders: Iterable[Sender]) -> _Index:
    senders = list(senders)
    index = _Index()
    sender_ids = {s.sender_id for s in senders if s.sender_id}
    identity_contacts: set[uuid.UUID] = set()
    if sender_ids:
        channels = {s.channel for s in senders if s.sender_id}
        for row in session.execute(
            select(
                IDENTITIES.c.id,
                IDENTITIES.c.channel,
                IDENTITIES.c.sender_id,
                IDENTITIES.c.contact_id,
            ).where(
                IDENTITIES.c.tenant_id == tenant_id,
                IDENTITIES.c.sender_id.in_(sender_ids),
                IDENTITIES.c.channel.in_(channels),
            )
        ):
            index.identities[(row.channel, row.sender_id)] = _Identity(row.id, row.contact_id)
            identity_contacts.add(row.contact_id)
    phones = {p for s in senders for p in s.phones}
    emails = {s.email for s in senders if s.email}
    matches = []
    if identity_contacts:
        matches.append(CONTACTS.c.id.in_(identity_contacts))
    if phones:
        matches.append(CONTACTS.c.phone.in_(phones))
    if emails:
        matches.append(CONTACTS.c.email.in_(emails))
    if matches:
        for found in session.execute(
            select(
                CONTACTS.c.id,
                CONTACTS.c.name,
                CONTACTS.c.phone,
                CONTACTS.c.email,
                CONTACTS.c.channel_preference,
            )
            .where(
                CONTACTS.c.tenant_id == tenant_id, CONTACTS.c.deleted_at.is_(None), or_(*matches)
            )
            .order_by(CONTACTS.c.created_at)
        ):
            index.add(
                _Contact(found.id, found.name, found.phone, found.email, found.channel_preference)
            )
    return index


def _plan(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    rows: Sequence[Row[Any]],
    outcome: BatchOutcome,
    now: datetime,
) -> _Plan:
    plan = _Plan()
    for row in rows:
        try:
            inbound = plan.inbound[row.id] = InboundMessage.from_json(row.payload)
            plan.sender_of[row.id] = Sender.of(inbound)
        except Exception as exc:  # a payload we cannot read is this message's fault alone
            outcome.errors[row.id] = _describe(exc)
    index = _load_index(session, tenant_id=tenant_id, senders=plan.sender_of.values())
    for row in rows:
        sender = plan.sender_of.get(row.id)
        if sender is None:
            continue
        contact, identity = index.match(sender)
        if contact is None:
            contact = _Contact(
                uuid.uuid4(),
                sender.name,
                sender.phone,
                sender.email,
                sender.channel,
                is_new=True,
                language=sender.language,
            )
            index.add(contact)
            plan.new_contacts.append(contact)
        else:
            _fill(contact, sender, index)
            if contact.filled and not contact.is_new:
                plan.filled[contact.id] = contact
        if sender.sender_id:
            key = (sender.channel, sender.sender_id)
            if identity is None:
                identity = _Identity(uuid.uuid4(), contact.id)
                index.identities[key] = identity
                plan.new_identities.append(
                    {
                        "id": identity.id,
                        "tenant_id": tenant_id,
                        "contact_id": contact.id,
                        "channel": sender.channel,
                        "sender_id": sender.sender_id,
                        "created_at": now,
                    }
                )
            elif identity.contact_id != contact.id:
                # Its contact was deleted: the sender id now names the contact made since.
                identity.contact_id = contact.id
                plan.repointed.append({"b_id": identity.id, "b_contact": contact.id})
        plan.handled.append({"b_id": row.id, "b_contact": contact.id, "b_now": now})
    return plan


def _fill(contact: _Contact, sender: Sender, index: _Index) -> None:
    """Give a known contact what it lacks, never what another live contact already holds.

    A name that only stands in for one (the contact's own phone or email, given when the first
    message carried no name) is lacking too, so a later display name replaces it.
    """
    stand_in = not contact.name.strip() or contact.name in (contact.phone, contact.email)
    if stand_in and (sender.display_name or not contact.name.strip()):
        contact.name = sender.display_name or sender.name
        contact.renamed = contact.filled = True
        contact.changed.append("name")
    if not contact.phone and sender.phone and sender.phone not in index.by_phone:
        contact.phone = sender.phone
        index.by_phone[sender.phone] = contact
        contact.filled = True
        contact.changed.append("phone")
    if not contact.email and sender.email and sender.email not in index.by_email:
        contact.email = sender.email
        index.by_email[sender.email] = contact
        contact.filled = True
        contact.changed.append("email")
    if contact.channel_preference is None:
        contact.channel_preference = sender.channel
        contact.filled = True
        contact.changed.append("channel_preference")


def _apply(session: Session, *, tenant_id: uuid.UUID, plan: _Plan, now: datetime) -> None:
    if plan.new_contacts:
        session.execute(
            insert(CONTACTS),
            [
                {
                    "id": c.id,
                    "tenant_id": tenant_id,
                    "name": c.name,
                    "phone": c.phone,
                    "email": c.email,
                    "status": "prospect",
                    "role": "prospect",
                    "channel_preference": c.channel_preference,
                    "source": c.channel_preference,
                    "language": c.language,
                    "created_at": now,
                    "updated_at": now,
                }
                for c in plan.new_contacts
            ],
        )
    if plan.filled:
        # COALESCE and the stand-in test re-check at write time: a value someone else set
        # since we read the contact is kept, not overwritten.
        session.execute(
            update(CONTACTS)
            .where(
                CONTACTS.c.id == bindparam("b_id"),
                CONTACTS.c.tenant_id == tenant_id,
                CONTACTS.c.deleted_at.is_(None),
            )
            .values(
                phone=func.coalesce(CONTACTS.c.phone, bindparam("b_phone")),
                email=func.coalesce(CONTACTS.c.email, bindparam("b_email")),
                channel_preference=func.coalesce(
                    CONTACTS.c.channel_preference, bindparam("b_pref")
                ),
                name=case(
                    (
                        bindparam("b_name", type_=String).is_not(None)
                        & (
                            (func.trim(CONTACTS.c.name) == "")
                            | (CONTACTS.c.name == CONTACTS.c.phone)
                            | (CONTACTS.c.name == CONTACTS.c.email)
                        ),
                        bindparam("b_name", type_=String),
                    ),
                    else_=CONTACTS.c.name,
                ),
                updated_at=bindparam("b_now"),
            ),
            [
                {
                    "b_id": c.id,
                    "b_phone": c.phone,
                    "b_email": c.email,
                    "b_pref": c.channel_preference,
                    "b_name": c.name if c.renamed else None,
                    "b_now": now,
                }
                for c in plan.filled.values()
            ],
        )
    if plan.new_identities:
        session.execute(insert(IDENTITIES), plan.new_identities)
    if plan.repointed:
        session.execute(
            update(IDENTITIES)
            .where(IDENTITIES.c.id == bindparam("b_id"), IDENTITIES.c.tenant_id == tenant_id)
            .values(contact_id=bindparam("b_contact")),
            plan.repointed,
        )
    if plan.handled:
        session.execute(
            update(MESSAGES)
            .where(
                MESSAGES.c.id == bindparam("b_id"),
                MESSAGES.c.tenant_id == tenant_id,
                MESSAGES.c.state == "pending",
            )
            .values(
                contact_id=bindparam("b_contact"), state="handled", handled_at=bindparam("b_now")
            ),
            plan.handled,
        )
    record_ingestion_events(
        session,
        tenant_id=tenant_id,
        created=[c.id for c in plan.new_contacts],
        updated={c.id: c.changed for c in plan.filled.values()},
        received=[
            _received(plan.inbound[h["b_id"]], h["b_id"], h["b_contact"]) for h in plan.handled
        ],
    )


def _received(
    message: InboundMessage, message_id: uuid.UUID, contact_id: uuid.UUID
) -> ReceivedMessage:
    return ReceivedMessage(
        message_id,
        contact_id,
        message.channel,
        message.provider_message_id,
        message.received_at,
        message.text,
    )


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_LENGTH]


def select_pending(
    session: Session, *, tenant_id: uuid.UUID, limit: int, exclude: Iterable[uuid.UUID] = ()
) -> list[Row[Any]]:
    """The tenant's oldest pending rows, locked; rows another drain holds are skipped."""
    stmt = (
        select(
            MESSAGES.c.id,
            MESSAGES.c.payload,
            MESSAGES.c.attempts,
            MESSAGES.c.channel,
            MESSAGES.c.request_id,
        )
        .where(MESSAGES.c.tenant_id == tenant_id, MESSAGES.c.state == "pending")
        .order_by(MESSAGES.c.accepted_at, MESSAGES.c.id)
        .limit(limit)
        # Two drains never take one row, even when a lock lease ran out under its holder.
        .with_for_update(skip_locked=True)
    )
    excluded = list(exclude)
    if excluded:
        stmt = stmt.where(MESSAGES.c.id.not_in(excluded))
    return list(session.execute(stmt))


def ingest_batch(
    session: Session, *, tenant_id: uuid.UUID, rows: Sequence[Row[Any]], max_attempts: int
) -> BatchOutcome:
    """Resolve each row's sender to a contact, link the row and mark it handled.

    A row that raises is charged an attempt and its error; at `max_attempts` it is parked as
    'failed'. The caller's unit of work commits.
    """
    outcome = BatchOutcome()
    if not rows:
        return outcome
    now = utcnow()
    try:
        with session.begin_nested():
            plan = _plan(session, tenant_id=tenant_id, rows=rows, outcome=outcome, now=now)
            _apply(session, tenant_id=tenant_id, plan=plan, now=now)
        outcome.handled = len(plan.handled)
        outcome.contacts_created = len(plan.new_contacts)
    except Exception as exc:  # redone row by row below, so only the faulty row is charged
        log.info(
            "ingest.batch_conflict tenant=%s rows=%d error=%s",
            tenant_id,
            len(rows),
            type(exc).__name__,
        )
        outcome = BatchOutcome()
        for row in rows:
            _ingest_one(session, tenant_id=tenant_id, row=row, outcome=outcome, now=now)
    _record_errors(
        session, tenant_id=tenant_id, rows=rows, outcome=outcome, max_attempts=max_attempts
    )
    return outcome


def _ingest_one(
    session: Session, *, tenant_id: uuid.UUID, row: Row[Any], outcome: BatchOutcome, now: datetime
) -> None:
    for attempt in range(1, RACE_RETRIES + 1):
        single = BatchOutcome()
        try:
            with session.begin_nested():
                plan = _plan(session, tenant_id=tenant_id, rows=[row], outcome=single, now=now)
                _apply(session, tenant_id=tenant_id, plan=plan, now=now)
        except IntegrityError as exc:
            # Another writer took this phone, email or sender id first: re-read and redo.
            if attempt == RACE_RETRIES:
                outcome.errors[row.id] = _describe(exc)
            continue
        except Exception as exc:  # poison: charged to this message, which is kept
            outcome.errors[row.id] = _describe(exc)
            return
        outcome.errors.update(single.errors)
        outcome.handled += len(plan.handled)
        outcome.contacts_created += len(plan.new_contacts)
        return


def _record_errors(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    rows: Sequence[Row[Any]],
    outcome: BatchOutcome,
    max_attempts: int,
) -> None:
    if not outcome.errors:
        return
    attempts = {row.id: row.attempts for row in rows}
    request_ids = {row.id: row.request_id for row in rows}
    params = []
    for message_id, error in outcome.errors.items():
        used = attempts[message_id] + 1
        outcome.max_attempts_used = max(outcome.max_attempts_used, used)
        if used >= max_attempts:
            outcome.failed.append(message_id)
        params.append(
            {
                "b_id": message_id,
                "b_error": error,
                "b_state": "failed" if used >= max_attempts else "pending",
            }
        )
        log.warning(
            "ingest.message_error tenant=%s message=%s attempt=%d error=%s",
            tenant_id,
            message_id,
            used,
            error,
            extra={"request_id": request_ids[message_id]},
        )
    session.execute(
        update(MESSAGES)
        .where(MESSAGES.c.id == bindparam("b_id"), MESSAGES.c.tenant_id == tenant_id)
        .values(
            attempts=MESSAGES.c.attempts + 1,
            last_error=bindparam("b_error"),
            state=bindparam("b_state"),
        ),
        params,
    )


def _log_handled(tenant_id: uuid.UUID, rows: Sequence[Row[Any]], outcome: BatchOutcome) -> None:
    """One line a message, after its batch committed, carrying the request id of the webhook
    that delivered it: an operator follows one message from the provider's call to its contact.
    """
    for row in rows:
        if row.id not in outcome.errors:
            log.info(
                "ingest.message_handled tenant=%s message=%s channel=%s",
                tenant_id,
                row.id,
                row.channel,
                extra={"request_id": row.request_id},
            )


@dataclass
class DrainResult:
    handled: int = 0
    contacts_created: int = 0
    failed: int = 0
    retrying: dict[uuid.UUID, int] = field(default_factory=dict)  # message id -> attempts used
    lost_lock: bool = False
    out_of_time: bool = False


def drain_tenant(
    db: Database,
    locks: TenantLocks,
    *,
    tenant_id: uuid.UUID,
    batch_size: int,
    max_attempts: int,
    budget_seconds: float,
) -> DrainResult:
    """Under the tenant's lock, ingest its pending rows, one transaction per batch, until none
    are left, the lease is lost, or `budget_seconds` ran out (the caller then drains again).

    Rows that erred but have attempts left are skipped for the rest of this drain and reported
    in `retrying`, so one poison message cannot spin a drain.
    """
    result = DrainResult()
    deadline = time.monotonic() + budget_seconds
    with locks.hold(tenant_id) as lease:
        while True:
            with db.unit_of_work() as session:
                rows = select_pending(
                    session, tenant_id=tenant_id, limit=batch_size, exclude=result.retrying
                )
                if not rows:
                    break
                outcome = ingest_batch(
                    session, tenant_id=tenant_id, rows=rows, max_attempts=max_attempts
                )
            _log_handled(tenant_id, rows, outcome)
            result.handled += outcome.handled
            result.contacts_created += outcome.contacts_created
            result.failed += len(outcome.failed)
            attempts = {row.id: row.attempts + 1 for row in rows}
            for message_id in outcome.errors:
                if message_id not in outcome.failed:
                    result.retrying[message_id] = attempts[message_id]
            if len(rows) < batch_size:
                # A short batch took every pending row visible when it read. A row committed
                # since has its own wake-up coming (the flag was cleared before we read, or,
                # without Redis, each accept sends one), so a further read would find nothing.
                break
            try:
                lease.extend()
            except LockLostError:
                result.lost_lock = True
                break
            if time.monotonic() >= deadline:
                result.out_of_time = True
                break
    return result
