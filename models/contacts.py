"""Contacts as the tenant sees them: listing, reading, creating, updating and soft-deleting.

Every query starts from `contacts_of(tenant_id)` (or `messages_of`), so a contact of another
tenant, or a deleted one, is simply not there. Functions flush but never commit.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import identities
from models.events import record_contact_updated, record_event
from models.identity import (
    InvalidIdentityError,
    check_phone_in_any_region,
    digits_of,
    normalize_email,
    normalize_phone,
)
from models.languages import is_language_code
from models.schema import Contact, Message, utcnow


class ContactStatus(StrEnum):
    PROSPECT = "prospect"
    SCHEDULED = "scheduled"
    APPLICANT = "applicant"
    RENTER = "renter"
    ARCHIVED = "archived"


class ContactRole(StrEnum):
    PROSPECT = "prospect"
    TENANT = "tenant"
    LANDLORD = "landlord"
    PROPERTY_MANAGER = "property_manager"
    VENDOR = "vendor"
    OTHER = "other"


class Channel(StrEnum):
    """The channel names; repeated from channels.base because models import nothing of ours."""

    WHATSAPP = "whatsapp"
    TELEGRAM = "telegram"
    SMS = "sms"
    EMAIL = "email"


STATUSES: tuple[str, ...] = tuple(ContactStatus)
ROLES: tuple[str, ...] = tuple(ContactRole)
CHANNELS: tuple[str, ...] = tuple(Channel)
UPDATABLE_FIELDS: frozenset[str] = frozenset(
    {
        "name",
        "email",
        "phone",
        "status",
        "role",
        "channel_preference",
        "source",
        "referral_source",
        "language",
    }
)
# Column widths (models.schema): longer values are refused here rather than by the database.
MAX_LENGTHS: Mapping[str, int] = {"name": 300, "source": 100, "referral_source": 300}

T = TypeVar("T")


class ContactError(Exception):
    """A request about contacts that cannot be done as asked."""


class ContactNotFoundError(ContactError, LookupError):
    def __init__(self, contact_id: uuid.UUID | str) -> None:
        super().__init__(f"no contact {contact_id}")
        self.contact_id = contact_id


class DuplicateContactError(ContactError):
    """Another live contact of the tenant already has this phone or email."""

    def __init__(self, *, field: str, existing_id: uuid.UUID | None) -> None:
        owner = f"contact {existing_id}" if existing_id else "another contact"
        super().__init__(f"{owner} already has this {field}")
        self.field = field
        self.existing_id = existing_id


@dataclass(frozen=True)
class FieldProblem:
    field: str  # the model's attribute name, e.g. `channel_preference`
    message: str


class ContactValidationError(ContactError, ValueError):
    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    page: int
    limit: int  # the effective page size, after the tenant's cap
    total: int

    @property
    def total_pages(self) -> int:
        return math.ceil(self.total / self.limit)


# How many merges a chain of merged-away ids may take to reach its survivor: more is a cycle.
MAX_MERGE_HOPS = 50


def contacts_of(tenant_id: uuid.UUID) -> Select[Contact]:
    """The tenant's live contacts (not deleted, not merged): where every contact query starts."""
    return select(Contact).where(
        Contact.tenant_id == tenant_id,
        Contact.deleted_at.is_(None),
        Contact.merged_into_id.is_(None),
    )


def kept_contacts_of(tenant_id: uuid.UUID) -> Select[Contact]:
    """The tenant's contacts that are not deleted, merged ones included."""
    return select(Contact).where(Contact.tenant_id == tenant_id, Contact.deleted_at.is_(None))


def resolve_contact(
    session: Session, *, tenant_id: uuid.UUID, contact_id: uuid.UUID, for_update: bool = False
) -> Contact:
    """The live contact `contact_id` names: itself, or the survivor it was merged into.

    With `for_update` the contact is locked; one merged away while we waited for its lock is
    followed to its survivor (a PATCH racing a merge changes the survivor, it is not a 404).
    """
    current = contact_id
    refresh = False
    for _ in range(MAX_MERGE_HOPS):
        statement = kept_contacts_of(tenant_id).where(Contact.id == current)
        if refresh:  # the session's copy predates the merge we waited for: read it anew
            statement = statement.execution_options(populate_existing=True)
        contact = session.scalars(statement).one_or_none()
        if contact is None:
            break
        if contact.merged_into_id is None:
            if not for_update:
                return contact
            locked = contacts_of(tenant_id).where(Contact.id == current).with_for_update()
            locked_contact = session.scalars(
                locked.execution_options(populate_existing=True)
            ).one_or_none()
            if locked_contact is not None:
                return locked_contact
            refresh = True  # merged or deleted between the two reads: look again
            continue
        current = contact.merged_into_id
    raise ContactNotFoundError(contact_id)


def messages_of(tenant_id: uuid.UUID) -> Select[Message]:
    return select(Message).where(Message.tenant_id == tenant_id)


def list_contacts(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    page: int = 1,
    limit: int = 20,
    max_limit: int = 100,
    status: str | None = None,
    role: str | None = None,
    channel: str | None = None,
    search: str | None = None,
) -> Page[Contact]:
    """One page of the tenant's contacts, newest first, with the total that match the filters."""
    _check_page(page, limit)
    problems = [
        *_choice_problem("status", status, STATUSES, allow_none=True),
        *_choice_problem("role", role, ROLES, allow_none=True),
        *_choice_problem("channel", channel, CHANNELS, allow_none=True),
    ]
    if problems:
        raise ContactValidationError(problems)
    statement = contacts_of(tenant_id)
    if status is not None:
        statement = statement.where(Contact.status == status)
    if role is not None:
        statement = statement.where(Contact.role == role)
    if channel is not None:
        statement = statement.where(Contact.channel_preference == channel)
    if search is not None and "\x00" in search:
        raise ContactValidationError([FieldProblem("search", "contains a NUL character")])
    if search is not None and search.strip():
        statement = statement.where(_search_clause(search.strip()))
    ordered = statement.order_by(Contact.created_at.desc(), Contact.id.desc())
    return _paginate(session, ordered, page=page, limit=min(limit, max_limit))


def get_contact(session: Session, *, tenant_id: uuid.UUID, contact_id: uuid.UUID) -> Contact:
    """The live contact the id names (a merged-away id names its survivor)."""
    return resolve_contact(session, tenant_id=tenant_id, contact_id=contact_id)


def create_contact(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    region: str,
    name: str | None,
    email: str | None = None,
    phone: str | None = None,
    status: str = "prospect",
    role: str = "prospect",
    channel_preference: str | None = None,
    source: str = "api",
    referral_source: str | None = None,
    language: str = "en",
    now: datetime | None = None,
) -> Contact:
    """A new live contact; its phone is read in the tenant's `region`.

    Raises DuplicateContactError when a live contact of the tenant has the phone or email, also
    when a concurrent create wins the race (the database's unique index decides).
    """
    values = _validated(
        {
            "name": name,
            "email": email,
            "phone": phone,
            "status": status,
            "role": role,
            "channel_preference": channel_preference,
            "source": source,
            "referral_source": referral_source,
            "language": language,
        },
        region=region,
    )
    _require_identity(values)
    _refuse_duplicates(session, tenant_id=tenant_id, values=values)
    now = now or utcnow()
    applied_at = now if values["status"] == ContactStatus.APPLICANT else None
    contact = Contact(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        created_at=now,
        updated_at=now,
        applied_at=applied_at,
        **values,
    )
    _write_guarding_duplicates(
        session, contact, tenant_id=tenant_id, write=lambda: _insert_held(session, contact)
    )
    record_event(
        session, tenant_id=tenant_id, type="contact.created", data={"contactId": str(contact.id)}
    )
    return contact


def _insert_held(session: Session, contact: Contact) -> None:
    """A new contact and the identities its primary phone and email are."""
    session.add(contact)
    session.flush()  # the contact first: its identities refer to it
    for kind in identities.PRIMARY_KINDS:
        value = getattr(contact, kind)
        if value:
            identities.add_identity(
                session,
                tenant_id=contact.tenant_id,
                contact_id=contact.id,
                kind=kind,
                value=value,
                now=contact.created_at,
            )


def update_contact(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    region: str,
    changes: Mapping[str, Any],
    now: datetime | None = None,
) -> Contact:
    """Apply `changes` (model attribute names) to a live contact of the tenant.

    `applied_at` follows `status`: set when it becomes applicant, cleared when it moves away.
    """
    unknown = sorted(set(changes) - UPDATABLE_FIELDS)
    if unknown:
        raise ContactValidationError([FieldProblem(f, "cannot be changed") for f in unknown])
    values = _validated(dict(changes), region=region)
    contact = resolve_contact(session, tenant_id=tenant_id, contact_id=contact_id, for_update=True)
    merged = {field: getattr(contact, field) for field in UPDATABLE_FIELDS} | values
    if contact.email or contact.phone:
        # A change may not take away the last way to reach the contact. A contact that never
        # had one (a Telegram sender known only by user id) can still have its status changed.
        _require_identity(merged)
    changed = {f: v for f, v in values.items() if getattr(contact, f) != v}
    _refuse_duplicates(
        session,
        tenant_id=tenant_id,
        values={f: changed.get(f) for f in ("phone", "email")},
        exclude_id=contact.id,
    )
    now = now or utcnow()
    if "status" in changed:
        contact.applied_at = now if changed["status"] == "applicant" else None
    previous = {kind: getattr(contact, kind) for kind in identities.PRIMARY_KINDS}
    for field, value in changed.items():
        setattr(contact, field, value)
    # Bumped even for a no-op PATCH: the client asked for a write and saw it succeed.
    contact.updated_at = max(now, contact.updated_at)

    def write() -> None:
        session.add(contact)
        session.flush()
        for kind in identities.PRIMARY_KINDS:
            if kind in changed:
                _replace_primary(
                    session, contact, kind=kind, old=previous[kind], new=changed[kind], now=now
                )

    _write_guarding_duplicates(session, contact, tenant_id=tenant_id, write=write)
    record_contact_updated(
        session, tenant_id=tenant_id, contact_id=contact.id, changed=list(changed)
    )
    return contact


def _replace_primary(
    session: Session,
    contact: Contact,
    *,
    kind: str,
    old: str | None,
    new: str | None,
    now: datetime,
) -> None:
    """A changed primary phone or email: the old one is retired (it no longer reaches this
    person), the new one becomes an identity unless the contact already holds it."""
    if old:
        identities.retire_identities(
            session, tenant_id=contact.tenant_id, contact_id=contact.id, keys=[(kind, old)], now=now
        )
    if not new:
        return
    held = identities.holders(session, tenant_id=contact.tenant_id, keys=[(kind, new)])
    if held.get((kind, new)) != contact.id:
        identities.add_identity(
            session,
            tenant_id=contact.tenant_id,
            contact_id=contact.id,
            kind=kind,
            value=new,
            now=now,
        )
        session.flush()


def delete_contact(
    session: Session, *, tenant_id: uuid.UUID, contact_id: uuid.UUID, now: datetime | None = None
) -> None:
    """Soft delete: the row stays for the audit trail; its identities are retired, so a later
    message from the same phone or email makes a new contact."""
    contact = resolve_contact(session, tenant_id=tenant_id, contact_id=contact_id, for_update=True)
    now = now or utcnow()
    contact.deleted_at = now
    contact.updated_at = now
    session.flush()
    identities.retire_identities(session, tenant_id=tenant_id, contact_id=contact.id, now=now)
    # The contact deleted, not the id asked for: a merged-away id names its survivor.
    record_event(
        session, tenant_id=tenant_id, type="contact.deleted", data={"contactId": str(contact.id)}
    )


def list_contact_messages(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID,
    page: int = 1,
    limit: int = 20,
    max_limit: int = 100,
) -> Page[Message]:
    """The contact's recorded (handled) messages, newest first."""
    _check_page(page, limit)
    contact = resolve_contact(session, tenant_id=tenant_id, contact_id=contact_id)
    statement = (
        messages_of(tenant_id)
        .where(Message.contact_id == contact.id, Message.state == "handled")
        .order_by(Message.received_at.desc(), Message.id.desc())
    )
    return _paginate(session, statement, page=page, limit=min(limit, max_limit))


def _paginate(session: Session, statement: Select[T], *, page: int, limit: int) -> Page[T]:
    total = session.scalar(select(func.count()).select_from(statement.order_by(None).subquery()))
    total = total or 0
    offset = (page - 1) * limit
    # Past the end, nothing to read: also keeps an absurd page number from overflowing OFFSET.
    if offset >= total:
        return Page(items=[], page=page, limit=limit, total=total)
    items = list(session.scalars(statement.limit(limit).offset(offset)))
    return Page(items=items, page=page, limit=limit, total=total)


def _check_page(page: int, limit: int) -> None:
    problems = []
    if page < 1:
        problems.append(FieldProblem("page", "must be 1 or more"))
    if limit < 1:
        problems.append(FieldProblem("limit", "must be 1 or more"))
    if problems:
        raise ContactValidationError(problems)


_LIKE_SPECIALS = re.compile(r"([\\%_])")
# A search made only of what people type in phone numbers is also matched on the phone's digits.
_PHONE_LIKE = re.compile(r"[\d\s()+\-./]+")


def _search_clause(term: str) -> ColumnElement[bool]:
    pattern = "%" + _LIKE_SPECIALS.sub(r"\\\1", term) + "%"
    clauses = [
        Contact.name.ilike(pattern, escape="\\"),
        Contact.email.ilike(pattern, escape="\\"),
        Contact.phone.ilike(pattern, escape="\\"),
    ]
    digits = digits_of(term)
    if digits and _PHONE_LIKE.fullmatch(term):
        # Phones are stored in E.164, `+` and digits only, so their digits are a plain substring.
        clauses.append(Contact.phone.like(f"%{digits}%"))
    return or_(*clauses)


def _validated(raw: Mapping[str, Any], *, region: str) -> dict[str, Any]:
    """`raw` checked and put in stored form; every bad field is reported at once."""
    values: dict[str, Any] = {}
    problems: list[FieldProblem] = []
    for field, value in raw.items():
        try:
            values[field] = _clean(field, value, region=region)
        except ValueError as exc:
            problems.append(FieldProblem(field, str(exc)))
    if problems:
        raise ContactValidationError(problems)
    return values


def check_field(field: str, value: Any) -> None:
    """Raise ValueError (saying why) for a value `field` can never take, whatever the tenant's
    region: for the API's schemas, so that one answer names every bad field of a body."""
    _clean(field, value, region=None)


def _clean(field: str, value: Any, *, region: str | None) -> Any:
    """`value` checked and in stored form; `region` None checks only what needs no region."""
    if value is not None and not isinstance(value, str):
        raise ValueError("must be a string")
    text = value.strip() if isinstance(value, str) else None
    if text is not None and ("\x00" in text or not _encodable(text)):
        raise ValueError("contains characters that cannot be stored")
    if field == "name":
        if not text:
            raise ValueError("is required and may not be empty")
    elif field in ("email", "phone"):
        if not text:
            return None  # an empty email or phone is an absent one
        try:
            if field == "email":
                return normalize_email(text)
            if region is None:
                check_phone_in_any_region(text)
                return text
            return normalize_phone(text, region)
        except InvalidIdentityError as exc:
            raise ValueError(str(exc)) from None
    elif field in ("status", "role"):
        choices = STATUSES if field == "status" else ROLES
        _require_choice(text, choices)
    elif field == "channel_preference":
        if text is None:
            return None
        _require_choice(text, CHANNELS)
    elif field == "source":
        if not text:
            raise ValueError("may not be empty")
    elif field == "referral_source":
        text = text or None
    elif field == "language" and (text is None or not is_language_code(text)):
        raise ValueError("must be an ISO 639-1 code in lowercase, such as en or es")
    if text is not None and len(text) > MAX_LENGTHS.get(field, len(text)):
        raise ValueError(f"may be at most {MAX_LENGTHS[field]} characters")
    return text


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from JSON's \ud800 escapes
        return False
    return True


def _require_choice(value: str | None, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}")


def _choice_problem(
    field: str, value: str | None, choices: Sequence[str], *, allow_none: bool
) -> list[FieldProblem]:
    if value is None and allow_none:
        return []
    if value not in choices:
        return [FieldProblem(field, f"must be one of {', '.join(choices)}")]
    return []


def _require_identity(values: Mapping[str, Any]) -> None:
    if not values.get("email") and not values.get("phone"):
        message = "a contact needs an email or a phone"
        raise ContactValidationError(
            [FieldProblem("email", message), FieldProblem("phone", message)]
        )


def _refuse_duplicates(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    values: Mapping[str, Any],
    exclude_id: uuid.UUID | None = None,
) -> None:
    """A phone or email that another live contact holds, as its primary or any identity: 409."""
    keys = [(kind, values[kind]) for kind in identities.PRIMARY_KINDS if values.get(kind)]
    held = identities.holders(session, tenant_id=tenant_id, keys=keys)
    for key in keys:
        holder = held.get(key)
        if holder is not None and holder != exclude_id:
            raise DuplicateContactError(field=key[0], existing_id=holder)


def _write_guarding_duplicates(
    session: Session, contact: Contact, *, tenant_id: uuid.UUID, write: Callable[[], None]
) -> None:
    """Write in a savepoint: a concurrent writer that took the phone or email first is a 409."""
    # Read before the write: a rolled-back savepoint expires what was written in it.
    contact_id = contact.id
    keys = [(kind, v) for kind in identities.PRIMARY_KINDS if (v := getattr(contact, kind))]
    try:
        with session.begin_nested():
            write()
    except IntegrityError:
        # The winner has committed by now (the unique index made us wait for it), so it is visible.
        held = identities.holders(session, tenant_id=tenant_id, keys=keys)
        for key in keys:
            holder = held.get(key)
            if holder is not None and holder != contact_id:
                raise DuplicateContactError(field=key[0], existing_id=holder) from None
        raise
