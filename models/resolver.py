"""The one contact resolver: each inbound sender found, linked or made a contact, and its
message recorded on that contact.

Matching is by identity, in the interface's order: the channel's own sender id, then the
BSUID, then the phone (on WhatsApp with its national variants), then the email; then the
identities the message retires (so a changed number still finds its person). Every identity on
one message is attested by the provider as the sender's own: one that no live contact holds is
added to the contact; one that another live contact holds merges the two (models.merges).

A batch is planned in memory from one lookup and written with a few executemany statements.
A message that needs a merge or retires identities is done alone, in order, through the ORM
with its row locks; the in-memory index follows what it did, and planning goes on. Functions
never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, bindparam, case, func, insert, select, update
from sqlalchemy.orm import Session

from models import identities, merges
from models.contacts import MAX_LENGTHS, ContactRole, ContactStatus
from models.events import NewEvent
from models.identities import Key
from models.identity import phone_variants
from models.languages import is_language_code
from models.schema import Base, Contact

CONTACTS = Base.metadata.tables["contacts"]
IDENTITIES = Base.metadata.tables["contact_identities"]
MESSAGES = Base.metadata.tables["messages"]
MAX_NAME = MAX_LENGTHS["name"]
MAX_VALUE = 320  # contact_identities.value


class UnidentifiableSenderError(ValueError):
    """A message with no sender id, BSUID, phone or email: no one to make a contact of."""


class UnresolvedLinkError(RuntimeError):
    """A message's identities still name several contacts after merging them (a writer
    outside the tenant lock moved one meanwhile): the message is retried."""


@dataclass(frozen=True)
class Sender:
    """Who wrote a message, as the adapter gave it (E.164 phones, lowercased emails)."""

    channel: str
    identities: tuple[Key, ...]  # in matching order
    retired: tuple[Key, ...] = ()
    display_name: str | None = None
    username: str | None = None
    language: str | None = None
    system: bool = False  # a provider's notice (a changed number), not words the person wrote

    @classmethod
    def of(
        cls,
        *,
        channel: str,
        identities: Iterable[Key],
        retired: Iterable[Key] = (),
        display_name: str | None = None,
        username: str | None = None,
        language: str | None = None,
        system: bool = False,
    ) -> Sender:
        found = tuple(_usable(identities))
        gone = tuple(k for k in _usable(retired) if k not in found)
        if not found and not gone:
            raise UnidentifiableSenderError("message has no sender id, BSUID, phone or email")
        return cls(channel, found, gone, display_name, username, language, system)

    def value_of(self, kind: str) -> str | None:
        return next((v for k, v in self.identities if k == kind), None)

    def lookups(self, key: Key) -> tuple[Key, ...]:
        """Every spelling `key` matches by: on WhatsApp a phone's national variants too."""
        kind, value = key
        if kind == "phone" and self.channel == "whatsapp":
            return (key, *((kind, v) for v in phone_variants(value)))
        return (key,)

    def all_lookups(self) -> list[Key]:
        return [k for key in (*self.identities, *self.retired) for k in self.lookups(key)]

    @property
    def language_code(self) -> str:
        code = (self.language or "").strip().lower()
        return code if is_language_code(code) else "en"

    @property
    def person_name(self) -> str | None:
        """The name the person gives themselves; a system notice speaks for no one."""
        if self.system:
            return None
        return (self.display_name or "").strip()[:MAX_NAME] or None

    def name(self) -> str:
        phone, email = self.value_of("phone"), self.value_of("email")
        for candidate in (self.person_name, phone, email):
            if candidate:
                return candidate[:MAX_NAME]
        if self.username:
            return ("@" + self.username.lstrip("@"))[:MAX_NAME]
        _kind, value = (self.identities or self.retired)[0]
        return f"{self.channel} {value}"[:MAX_NAME]

    def stand_in_names(self) -> set[str]:
        """The names `name` gives this sender when they give none (@username, channel and id):
        a contact still named so lacks a name, as one named by its own phone or email does."""
        names = {
            f"{self.channel} {value}"[:MAX_NAME] for _, value in (*self.identities, *self.retired)
        }
        if self.username:
            names.add(("@" + self.username.lstrip("@"))[:MAX_NAME])
        return names


def _usable(keys: Iterable[Key]) -> Iterable[Key]:
    seen: set[Key] = set()
    for kind, value in keys:
        if (
            kind in identities.KINDS
            and value
            and len(value) <= MAX_VALUE
            and (kind, value) not in seen
        ):
            seen.add((kind, value))
            yield kind, value


@dataclass
class _Contact:
    id: uuid.UUID
    name: str
    phone: str | None
    email: str | None
    channel_preference: str | None
    created_at: datetime
    is_new: bool = False
    filled: bool = False
    renamed: bool = False
    stand_in_name: str | None = None  # the name a rename replaces, re-checked at write time
    language: str = "en"  # only written for a new contact
    changed: set[str] = field(default_factory=set)  # fields a known contact gained, for events


@dataclass
class ResolveOutcome:
    handled: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)  # message id -> contact
    contacts_created: int = 0
    merges: int = 0
    created: list[uuid.UUID] = field(default_factory=list)
    updated: dict[uuid.UUID, set[str]] = field(default_factory=dict)  # contact -> fields
    # contact.merged events of the batch, for the caller to write after its contact.created
    merged: list[NewEvent] = field(default_factory=list)


class _Index:
    """The tenant's live contacts that hold any identity a batch of messages carries."""

    def __init__(self, tenant_id: uuid.UUID, now: datetime) -> None:
        self.tenant_id = tenant_id
        self.now = now
        self.contacts: dict[uuid.UUID, _Contact] = {}
        self.holder: dict[Key, uuid.UUID] = {}
        self.made = 0  # contacts made so far in the batch

    def absorb(self, session: Session, survivor: uuid.UUID, merged: Sequence[uuid.UUID]) -> None:
        """After a merge: the merged contacts' identities are the survivor's."""
        gone = set(merged)
        for key, holder in self.holder.items():
            if holder in gone:
                self.holder[key] = survivor
        for contact_id in gone:
            self.contacts.pop(contact_id, None)
        contact = session.get(Contact, survivor)  # in the session since the merge: no query
        if contact is not None:
            self.refresh(contact)

    def refresh(self, contact: Contact) -> None:
        known = self.contacts[contact.id]
        known.name, known.phone, known.email = contact.name, contact.phone, contact.email
        known.channel_preference = contact.channel_preference

    def found(self, sender: Sender) -> list[tuple[uuid.UUID, Key]]:
        """Each distinct live contact holding one of the sender's identities, in match order,
        with the identity of the message that found it."""
        seen: dict[uuid.UUID, Key] = {}
        for key in (*sender.identities, *sender.retired):
            for lookup in sender.lookups(key):
                holder = self.holder.get(lookup)
                if holder is not None and holder not in seen:
                    seen[holder] = key
        return list(seen.items())


def _load_index(
    session: Session, *, tenant_id: uuid.UUID, now: datetime, senders: Iterable[Sender]
) -> _Index:
    index = _Index(tenant_id, now)
    keys = {k for s in senders for k in s.all_lookups()}
    if not keys:
        return index
    rows = session.execute(
        select(
            IDENTITIES.c.kind,
            IDENTITIES.c.value,
            CONTACTS.c.id,
            CONTACTS.c.name,
            CONTACTS.c.phone,
            CONTACTS.c.email,
            CONTACTS.c.channel_preference,
            CONTACTS.c.created_at,
        )
        .join(CONTACTS, CONTACTS.c.id == IDENTITIES.c.contact_id)
        .where(
            IDENTITIES.c.tenant_id == tenant_id,
            IDENTITIES.c.retired_at.is_(None),
            identities.matching(keys),
            CONTACTS.c.deleted_at.is_(None),
            CONTACTS.c.merged_into_id.is_(None),
        )
    )
    for row in rows:
        index.holder[(row.kind, row.value)] = row.id
        if row.id not in index.contacts:
            index.contacts[row.id] = _Contact(
                row.id, row.name, row.phone, row.email, row.channel_preference, row.created_at
            )
    return index


@dataclass
class _Plan:
    """The writes one run of messages needs, decided in memory."""

    tenant_id: uuid.UUID
    now: datetime
    index: _Index
    new_contacts: list[_Contact] = field(default_factory=list)
    filled: dict[uuid.UUID, _Contact] = field(default_factory=dict)
    new_identities: list[dict[str, Any]] = field(default_factory=list)
    handled: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)

    def add(self, message_id: uuid.UUID, sender: Sender, *, alone: bool = False) -> bool:
        """Plan one message; False when it must be done alone (a merge, or retirements)."""
        found = self.index.found(sender)
        if len(found) > 1 or (sender.retired and not alone):
            return False
        contact = self.index.contacts[found[0][0]] if found else self._new_contact(sender)
        for key in sender.identities:
            if not any(k in self.index.holder for k in sender.lookups(key)):
                self._add_identity(contact, key)
        self._fill(contact, sender)
        self.handled[message_id] = contact.id
        return True

    def _new_contact(self, sender: Sender) -> _Contact:
        # A microsecond apart, in message order: of two contacts one batch made, the one made
        # first is the older, and so the survivor should a later message join them.
        self.index.made += 1
        contact = _Contact(
            uuid.uuid4(),
            sender.name(),
            None,
            None,
            sender.channel,
            self.now + timedelta(microseconds=self.index.made),
            is_new=True,
            language=sender.language_code,
        )
        self.index.contacts[contact.id] = contact
        self.new_contacts.append(contact)
        return contact

    def _add_identity(self, contact: _Contact, key: Key) -> None:
        kind, value = key
        self.index.holder[key] = contact.id
        self.new_identities.append(
            {
                "id": uuid.uuid4(),
                "tenant_id": self.tenant_id,
                "contact_id": contact.id,
                "kind": kind,
                "value": value,
                "created_at": self.now,
            }
        )
        # The first phone and email a contact gains become its primary ones.
        if kind == "phone" and contact.phone is None:
            contact.phone = value
            contact.filled = True
            contact.changed.add("phone")
        elif kind == "email" and contact.email is None:
            contact.email = value
            contact.filled = True
            contact.changed.add("email")

    def _fill(self, contact: _Contact, sender: Sender) -> None:
        """A known contact gains what it lacks. A name that only stands in for one (its own
        phone or email, or the sender's @username or id, given when the first message carried
        no name) is lacking too."""
        stand_in = (
            not contact.name.strip()
            or contact.name in (contact.phone, contact.email)
            or contact.name in sender.stand_in_names()
        )
        if stand_in and sender.person_name:
            if not contact.renamed:
                contact.stand_in_name = contact.name
            contact.name = sender.person_name
            contact.renamed = contact.filled = True
            contact.changed.add("name")
        if contact.channel_preference is None:
            contact.channel_preference = sender.channel
            contact.filled = True
            contact.changed.add("channel_preference")
        if contact.filled and not contact.is_new:
            self.filled[contact.id] = contact

    def apply(self, session: Session, outcome: ResolveOutcome) -> None:
        create_contacts(session, tenant_id=self.tenant_id, now=self.now, new=self.new_contacts)
        fill_contacts(session, tenant_id=self.tenant_id, now=self.now, filled=self.filled)
        if self.new_identities:
            session.execute(insert(IDENTITIES), self.new_identities)
        record_handled(session, tenant_id=self.tenant_id, handled=self.handled, now=self.now)
        outcome.handled.update(self.handled)
        outcome.contacts_created += len(self.new_contacts)
        outcome.created.extend(c.id for c in self.new_contacts)
        for contact in self.filled.values():
            outcome.updated.setdefault(contact.id, set()).update(contact.changed)
        # Written: the contacts the index keeps are plain known contacts for the next plan.
        for contact in (*self.new_contacts, *self.filled.values()):
            contact.is_new = contact.filled = contact.renamed = False
            contact.stand_in_name = None
            contact.changed.clear()


def create_contacts(
    session: Session, *, tenant_id: uuid.UUID, now: datetime, new: Sequence[_Contact]
) -> None:
    """New senders become contacts: prospects of the channel they wrote on (source and
    channel preference), in one statement for the batch."""
    if not new:
        return
    session.execute(
        insert(CONTACTS),
        [
            {
                "id": c.id,
                "tenant_id": tenant_id,
                "name": c.name,
                "phone": c.phone,
                "email": c.email,
                "status": ContactStatus.PROSPECT.value,
                "role": ContactRole.PROSPECT.value,
                "channel_preference": c.channel_preference,
                "source": c.channel_preference,
                "language": c.language,
                "created_at": c.created_at,
                "updated_at": c.created_at,
            }
            for c in new
        ],
    )


def fill_contacts(
    session: Session, *, tenant_id: uuid.UUID, now: datetime, filled: dict[uuid.UUID, _Contact]
) -> None:
    """Known contacts gain what they lacked (primary phone or email, channel, a real name)."""
    if not filled:
        return
    # COALESCE and the stand-in test re-check at write time: a value someone else set since we
    # read the contact is kept, not overwritten.
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
            channel_preference=func.coalesce(CONTACTS.c.channel_preference, bindparam("b_pref")),
            name=case(
                (
                    bindparam("b_name", type_=String).is_not(None)
                    & (
                        (func.trim(CONTACTS.c.name) == "")
                        | (CONTACTS.c.name == CONTACTS.c.phone)
                        | (CONTACTS.c.name == CONTACTS.c.email)
                        | (CONTACTS.c.name == bindparam("b_stand_in", type_=String))
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
                "b_stand_in": c.stand_in_name if c.renamed else None,
                "b_now": now,
            }
            for c in filled.values()
        ],
    )


def record_handled(
    session: Session, *, tenant_id: uuid.UUID, handled: dict[uuid.UUID, uuid.UUID], now: datetime
) -> None:
    """Messages recorded on their contacts: linked and marked handled (once: pending only)."""
    if not handled:
        return
    session.execute(
        update(MESSAGES)
        .where(
            MESSAGES.c.id == bindparam("b_id"),
            MESSAGES.c.tenant_id == tenant_id,
            MESSAGES.c.state == "pending",
        )
        .values(contact_id=bindparam("b_contact"), state="handled", handled_at=bindparam("b_now")),
        [{"b_id": m, "b_contact": c, "b_now": now} for m, c in handled.items()],
    )


def resolve_messages(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    senders: Sequence[tuple[uuid.UUID, Sender]],
    now: datetime,
) -> ResolveOutcome:
    """Resolve each message's sender to a live contact, in order, and record the message.

    One lookup serves the whole batch: the index is kept in step with every write, merges and
    retirements included, so the messages after a link see what it did.
    """
    outcome = ResolveOutcome()
    index = _load_index(session, tenant_id=tenant_id, now=now, senders=[s for _, s in senders])
    plan = _Plan(tenant_id, now, index)
    for message_id, sender in senders:
        if plan.add(message_id, sender):
            continue
        plan.apply(session, outcome)
        _link_alone(session, index=index, message_id=message_id, sender=sender, outcome=outcome)
        plan = _Plan(tenant_id, now, index)
    plan.apply(session, outcome)
    return outcome


def _reason(sender: Sender, key: Key) -> str:
    verb = "changed" if key in sender.retired else "shared"
    return f"attested: {sender.channel} {verb} {key[0]}"


def _link_alone(
    session: Session,
    *,
    index: _Index,
    message_id: uuid.UUID,
    sender: Sender,
    outcome: ResolveOutcome,
) -> None:
    """One message whose identities join contacts or retire some: merge, record, retire."""
    plan = _Plan(index.tenant_id, index.now, index)
    found = index.found(sender)
    if len(found) > 1:
        order = {contact_id: n for n, (contact_id, _) in enumerate(found)}
        key_of = dict(found)
        survivor, *others = sorted(
            (index.contacts[c] for c, _ in found), key=lambda c: (c.created_at, c.id)
        )
        for other in others:
            later = max(survivor.id, other.id, key=lambda c: order[c])
            merges.merge_contacts(
                session,
                tenant_id=index.tenant_id,
                survivor_id=survivor.id,
                merged_id=other.id,
                reason=_reason(sender, key_of[later]),
                now=index.now,
                deferred_events=outcome.merged,
            )
            outcome.merges += 1
        index.absorb(session, survivor.id, [o.id for o in others])
    if not plan.add(message_id, sender, alone=True):
        raise UnresolvedLinkError(f"message {message_id} still names several contacts")
    plan.apply(session, outcome)
    retired = [k for key in sender.retired for k in sender.lookups(key)]
    contact_id = plan.handled[message_id]
    if retired and identities.retire_identities(
        session, tenant_id=index.tenant_id, contact_id=contact_id, keys=retired, now=index.now
    ):
        for key in retired:
            index.holder.pop(key, None)
        contact = session.get(Contact, contact_id, populate_existing=True)
        if contact is not None:
            merges.sync_primaries(session, contact=contact)
            index.refresh(contact)
