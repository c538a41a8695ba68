"""Meta WhatsApp notifications on the shared app route, split by the business phone number
each change is for (`value.metadata.phone_number_id`).

Meta allows one callback URL per app, so an operator whose one app serves many tenants gets
every tenant's changes at one URL, several tenants' changes possibly in one POST. Each change
names the business phone number it is for; the route sends it to the tenant that registered
that number. This module only splits and parses (with `channels.whatsapp`): no lookups here.

Provider documentation:
- the notification and `metadata.phone_number_id`:
  https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages
- one callback URL an app (overridable per number or account):
  https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/override
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from channels.base import MalformedRequestError, Parsed
from channels.text import clean_text
from channels.whatsapp import parse_notification

BUSINESS_ACCOUNT: Final = "whatsapp_business_account"
MAX_ID_LENGTH: Final = 64  # what the tables keep of a phone number or account id


@dataclass(frozen=True)
class Change:
    """One change as Meta sent it, with the entry (WhatsApp Business Account) it came in."""

    phone_number_id: str | None  # None: a change not about a phone number's messages
    entry_id: str | None
    raw: dict[str, Any]  # as sent, made storable (see `storable_json`)

    @property
    def carries_messages(self) -> bool:
        """Whether Meta sent messages in it, whatever this parser makes of them today."""
        value = self.raw.get("value")
        return isinstance(value, dict) and bool(value.get("messages"))

    @property
    def key(self) -> str:
        """Stable across Meta's redeliveries of the same notification, distinct otherwise."""
        canonical = json.dumps(
            {"entry": self.entry_id, "change": self.raw},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def notification_of(changes: Sequence[Change]) -> dict[str, Any]:
    """The changes as a notification of their own, as `parse_notification` takes one."""
    entries: list[dict[str, Any]] = []
    for change in changes:
        entry: dict[str, Any] = {"changes": [change.raw]}
        if change.entry_id is not None:
            entry["id"] = change.entry_id
        entries.append(entry)
    return {"object": BUSINESS_ACCOUNT, "entry": entries}


@dataclass(frozen=True)
class ParsedChange:
    change: Change
    parsed: Parsed


@dataclass(frozen=True)
class SharedNotification:
    """A verified notification: its changes by phone number id, and what nobody gets."""

    by_phone_number_id: dict[str, tuple[ParsedChange, ...]] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()  # reasons for changes no tenant is addressed by


def merged(changes: Sequence[ParsedChange]) -> Parsed:
    """The messages and skip reasons of several changes, as one request's Parsed."""
    return Parsed(
        messages=tuple(m for c in changes for m in c.parsed.messages),
        ignored=tuple(r for c in changes for r in c.parsed.ignored),
    )


def parse_shared_notification(payload: Any) -> SharedNotification:
    """Every change parsed, grouped by the phone number it is for.

    Raises MalformedRequestError for anything `parse_notification` would refuse, and for a
    change carrying messages without a phone number id (there is no one to give it to).
    """
    if not isinstance(payload, dict):
        raise MalformedRequestError("notification is not an object")
    if payload.get("object") != BUSINESS_ACCOUNT:
        # Page or Instagram notifications of the same app: acknowledged, for nobody.
        return SharedNotification(ignored=parse_notification(payload).ignored)
    groups: dict[str, list[ParsedChange]] = {}
    ignored: list[str] = []
    for change in _changes(payload):
        parsed = parse_notification(notification_of([change]))
        if change.phone_number_id is None:
            if parsed.messages:
                raise MalformedRequestError("a messages change without metadata.phone_number_id")
            ignored.extend(parsed.ignored)
            continue
        groups.setdefault(change.phone_number_id, []).append(ParsedChange(change, parsed))
    return SharedNotification(
        by_phone_number_id={k: tuple(v) for k, v in groups.items()}, ignored=tuple(ignored)
    )


def _changes(payload: dict[str, Any]) -> list[Change]:
    entries = payload.get("entry")
    if not isinstance(entries, list):
        raise MalformedRequestError("entry is not a list")
    found: list[Change] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise MalformedRequestError("entry is not an object")
        changes = entry.get("changes")
        if not isinstance(changes, list):
            raise MalformedRequestError("entry.changes is not a list")
        entry_id = _id_text(entry.get("id"))
        if entry_id is not None and len(entry_id) > MAX_ID_LENGTH:
            entry_id = None  # only informational: routing goes by the phone number id
        for raw in changes:
            if not isinstance(raw, dict):
                raise MalformedRequestError("change is not an object")
            found.append(Change(_phone_number_id(raw), entry_id, storable_json(raw)))
    return found


def storable_json(value: Any) -> Any:
    """A decoded JSON value whose every string (keys too) a database column takes."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [storable_json(item) for item in value]
    if isinstance(value, dict):
        return {clean_text(str(k)): storable_json(v) for k, v in value.items()}
    return value


def _phone_number_id(change: dict[str, Any]) -> str | None:
    value = change.get("value")
    metadata = value.get("metadata") if isinstance(value, dict) else None
    if not isinstance(metadata, dict):
        return None
    phone_number_id = _id_text(metadata.get("phone_number_id"))
    if phone_number_id is not None and len(phone_number_id) > MAX_ID_LENGTH:
        raise MalformedRequestError("metadata.phone_number_id is too long to be a Graph API id")
    return phone_number_id


def _id_text(value: Any) -> str | None:
    """A Graph API id: Meta sends strings; a bare number is read as its digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return clean_text(value.strip()) or None
    return None
