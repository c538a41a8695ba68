"""Meta WhatsApp Cloud API webhooks: the subscription check and signed message notifications.

Provider documentation:
- verification requests and X-Hub-Signature-256:
  https://developers.facebook.com/docs/graph-api/webhooks/getting-started
- the messages webhook and its payloads (text, media, location, interactive, statuses):
  https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages

One POST may carry several entries, each with several changes, each with several messages and
the senders' profiles (`contacts`, keyed by `wa_id`). Statuses of messages the tenant sent ride
in the same notifications and are not from a person.

Meta is rolling out WhatsApp usernames: a user who adopts one may reach the business with a
business-scoped user id and no phone (`from` absent). Such a message is skipped with a reason
until Intake stores that id; everything with a `from` is read as before.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from channels.base import (
    InboundMessage,
    InvalidSignatureError,
    MalformedRequestError,
    Media,
    Parsed,
    RawRequest,
    require_secret,
)
from channels.phones import international_e164
from channels.text import storable

SIGNING_CONFIG_KEY: Final = "whatsapp_app_secret"
VERIFY_CONFIG_KEY: Final = "whatsapp_verify_token"
SIGNATURE_HEADER: Final = "x-hub-signature-256"
SIGNATURE_PREFIX: Final = "sha256="
BUSINESS_ACCOUNT: Final = "whatsapp_business_account"

STATUS_CALLBACK: Final = "status callback"
REACTION: Final = "reaction"
SYSTEM_MESSAGE: Final = "system message"
NO_SENDER_PHONE: Final = "sender without a phone number"

MEDIA_TYPES: Final = frozenset({"image", "audio", "video", "document", "sticker"})
# Not something a person wrote to the tenant: a reaction to the tenant's own message, and
# WhatsApp's own notices (a user changed number, identity changed).
_NOT_MESSAGES: Final = {"reaction": REACTION, "system": SYSTEM_MESSAGE}


class WhatsAppAdapter:
    """`GET` and `POST /webhooks/{tenant_id}/whatsapp`."""

    route = "whatsapp"

    def parse(self, request: RawRequest, secrets: Mapping[str, str], now: datetime) -> Parsed:
        method = request.method.upper()
        if method == "GET":
            return answer_subscription(request.query, require_secret(secrets, VERIFY_CONFIG_KEY))
        if method != "POST":
            raise MalformedRequestError(f"{method} is not a WhatsApp webhook method")
        verify(request, require_secret(secrets, SIGNING_CONFIG_KEY))
        return parse_notification(load_json(request.body))


def answer_subscription(query: Mapping[str, str], verify_token: str) -> Parsed:
    """The challenge to echo when Meta subscribes with the tenant's verify token."""
    mode = query.get("hub.mode", "")
    token = query.get("hub.verify_token", "")
    if mode != "subscribe" or not hmac.compare_digest(
        token.encode("utf-8", "replace"), verify_token.encode("utf-8", "replace")
    ):
        raise InvalidSignatureError("hub.verify_token does not match")
    challenge = query.get("hub.challenge")
    if not challenge:
        raise MalformedRequestError("no hub.challenge")
    return Parsed(reply=challenge)


def verify(request: RawRequest, app_secret: str) -> None:
    """Raise InvalidSignatureError unless the raw body is signed with the app secret."""
    header = (request.header(SIGNATURE_HEADER) or "").strip()
    if not header.startswith(SIGNATURE_PREFIX):
        raise InvalidSignatureError("missing X-Hub-Signature-256")
    expected = hmac.new(app_secret.encode("utf-8"), request.body, hashlib.sha256).hexdigest()
    given = header[len(SIGNATURE_PREFIX) :].lower().encode("utf-8", "replace")
    if not hmac.compare_digest(expected.encode("ascii"), given):
        raise InvalidSignatureError("X-Hub-Signature-256 does not match")


def load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad JSON and bytes that are not UTF-8; RecursionError, nesting
        # deeper than the parser will follow.
        raise MalformedRequestError("body is not JSON") from exc


def parse_notification(payload: Any) -> Parsed:
    """Every message of every change of every entry, and why the rest were skipped."""
    notification = as_object(payload, "notification")
    kind = notification.get("object")
    if kind != BUSINESS_ACCOUNT:
        # The same Meta app (and secret) may also send Page or Instagram notifications here.
        return Parsed(ignored=(f"not a {BUSINESS_ACCOUNT} notification",))
    messages: list[InboundMessage] = []
    ignored: list[str] = []
    for entry in as_list(notification.get("entry"), "entry"):
        for change in as_list(as_object(entry, "entry").get("changes"), "entry.changes"):
            change = as_object(change, "change")
            field = change.get("field")
            if field != "messages":
                ignored.append(f"{str(field)[:40]} notification")
                continue
            found, skipped = parse_change_value(as_object(change.get("value"), "change.value"))
            messages.extend(found)
            ignored.extend(skipped)
    return Parsed(messages=tuple(storable(m) for m in messages), ignored=tuple(ignored))


def parse_change_value(value: dict[str, Any]) -> tuple[list[InboundMessage], list[str]]:
    profiles = profiles_by_wa_id(as_list(value.get("contacts", []), "contacts"))
    messages: list[InboundMessage] = []
    ignored = [STATUS_CALLBACK for _ in as_list(value.get("statuses", []), "statuses")]
    for raw in as_list(value.get("messages", []), "messages"):
        message = as_object(raw, "message")
        kind = text_field(message, "type") or "unknown"
        if kind in _NOT_MESSAGES:
            ignored.append(_NOT_MESSAGES[kind])
            continue
        parsed = parse_message(message, kind, profiles)
        if parsed is None:
            ignored.append(NO_SENDER_PHONE)
        else:
            messages.append(parsed)
    return messages, ignored


def profiles_by_wa_id(contacts: list[Any]) -> dict[str, tuple[str, str | None]]:
    """wa_id -> (wa_id, profile name) for the senders of this change."""
    profiles: dict[str, tuple[str, str | None]] = {}
    for raw in contacts:
        contact = as_object(raw, "contact")
        wa_id = text_field(contact, "wa_id")
        if not wa_id:
            continue
        profile = as_object(contact.get("profile", {}), "contact.profile")
        profiles[wa_id] = (wa_id, text_field(profile, "name"))
    return profiles


def parse_message(
    message: dict[str, Any], kind: str, profiles: Mapping[str, tuple[str, str | None]]
) -> InboundMessage | None:
    message_id = text_field(message, "id")
    if not message_id:
        raise MalformedRequestError("message without id")
    received_at = timestamp_of(message.get("timestamp"))
    sender = text_field(message, "from")
    if not sender:
        # A username-only sender (no phone); see the module docstring.
        return None
    wa_id, display_name = profiles.get(sender, (sender, None))
    text, media = content_of(message, kind)
    return InboundMessage(
        channel="whatsapp",
        provider_message_id=message_id,
        received_at=received_at,
        sender_id=wa_id,
        phone=international_e164(sender),
        display_name=display_name,
        text=text,
        media=media,
    )


def content_of(message: dict[str, Any], kind: str) -> tuple[str | None, tuple[Media, ...]]:
    """The words and attachments of one message, by its `type`."""
    body = as_object(message.get(kind, {}), f"message.{kind}") if kind in message else {}
    if kind == "text":
        return text_field(body, "body"), ()
    if kind == "button":  # a quick-reply button of a template
        return text_field(body, "text"), ()
    if kind == "interactive":  # button_reply, list_reply: the title the person tapped
        reply_kind = text_field(body, "type") or ""
        reply = as_object(body.get(reply_kind, {}), "interactive reply")
        return text_field(reply, "title") or text_field(reply, "body"), ()
    if kind in MEDIA_TYPES:
        caption = text_field(body, "caption")
        media = Media(
            kind=kind,
            mime_type=text_field(body, "mime_type"),
            provider_id=text_field(body, "id"),
            filename=text_field(body, "filename"),
            caption=caption,
        )
        return caption, (media,)
    if kind == "location":
        return None, (location_of(body),)
    if kind == "contacts":
        names = [
            text_field(
                as_object(as_object(card, "contact card").get("name", {}), "name"), "formatted_name"
            )
            for card in as_list(message.get("contacts", []), "shared contacts")
        ]
        caption = ", ".join(name for name in names if name) or None
        return None, (Media(kind="contacts", caption=caption),)
    # "unsupported", "order" and types Meta adds later still come from a person: the message
    # is kept, without content, so the sender becomes a contact.
    return None, ()


def location_of(body: dict[str, Any]) -> Media:
    latitude, longitude = body.get("latitude"), body.get("longitude")
    url = text_field(body, "url")
    if is_number(latitude) and is_number(longitude):
        url = f"geo:{latitude},{longitude}"  # RFC 5870 carries the coordinates themselves
    parts = (text_field(body, "name"), text_field(body, "address"))
    caption = ", ".join(part for part in parts if part) or None
    return Media(kind="location", url=url, caption=caption)


def timestamp_of(value: Any) -> datetime:
    """Meta's unix seconds (sent as a string) as an aware UTC datetime."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise MalformedRequestError("message timestamp is not unix seconds")
    try:
        return datetime.fromtimestamp(int(value), tz=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise MalformedRequestError("message timestamp is not unix seconds") from exc


def as_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedRequestError(f"{what} is not an object")
    return value


def as_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedRequestError(f"{what} is not a list")
    return value


def text_field(obj: Mapping[str, Any], name: str) -> str | None:
    """A string field, None when absent or empty; any other type is a malformed payload."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedRequestError(f"{name} is not a string")
    return value or None


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


ADAPTER: Final = WhatsAppAdapter()
