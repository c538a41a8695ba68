"""Meta WhatsApp Cloud API webhooks: the subscription check and signed message notifications.

Provider documentation:
- verification requests and X-Hub-Signature-256:
  https://developers.facebook.com/docs/graph-api/webhooks/getting-started
- the messages webhook and its payloads (text, media, location, interactive, statuses):
  https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages
- business-scoped user ids and usernames (`from_user_id`, `contacts[].user_id`, `username`, the
  `contact_request` origin of a shared phone):
  https://developers.facebook.com/documentation/business-messaging/whatsapp/business-scoped-user-ids/
- system messages (`user_changed_number`, `user_changed_user_id`):
  https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/system/
- group messages (`group_id`):
  https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/group/
- coexistence echoes (`smb_message_echoes`):
  https://developers.facebook.com/documentation/business-messaging/whatsapp/embedded-signup/onboarding-business-app-users/

One POST may carry several entries, each with several changes, each with several messages and
the senders' profiles (`contacts`). Statuses of messages the tenant sent ride in the same
notifications and are not from a person.

A sender is named by `from` (the wa_id, a phone number without `+`), by a business-scoped user
id (`from_user_id`, and `user_id` in `contacts`), or by both: Meta leaves out the phone of a user
who adopted a username. Either is enough to be a person; both together are one person. A
`username` is only ever a name to show. A contact card the sender shares is somebody else's
unless Meta marks it `origin: "contact_request"`: the phone the user shared on request is theirs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from channels.base import (
    Identity,
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
EDITED: Final = "edited message"
REVOKED: Final = "revoked message"
ECHO: Final = "message echo"
SYSTEM_MESSAGE: Final = "system message"
NO_SENDER: Final = "sender without a wa_id or user id"
# A change whose `value` holds only Meta's `errors` (say, a delivery Meta could not process).
ERROR_NOTICE: Final = "error notification"

MEDIA_TYPES: Final = frozenset({"image", "audio", "video", "document", "sticker"})
# Not something a person wrote to the tenant: a reaction to the tenant's own message, and a
# change to or deletion of a message that was already ingested under its own wamid.
_NOT_MESSAGES: Final = {"reaction": REACTION, "edit": EDITED, "revoke": REVOKED}
# Coexistence: messages the business sent from the WhatsApp Business app, echoed to the API.
ECHO_FIELD: Final = "smb_message_echoes"
# System notices that tell of a new identity; others (say a security code change) are skipped.
CHANGED_NUMBER: Final = frozenset({"user_changed_number", "customer_changed_number"})
CHANGED_USER_ID: Final = "user_changed_user_id"
CONTACT_REQUEST: Final = "contact_request"


@dataclass(frozen=True)
class Profile:
    """One entry of a change's `contacts`: who sent its messages, as Meta knows them."""

    wa_id: str | None
    user_id: str | None
    name: str | None
    username: str | None


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
    """Every message of every change of every entry, and why the rest were skipped.

    Takes a decoded notification whose signature was already checked, so that the shared
    route can hand over each tenant's own changes.
    """
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
            if field == ECHO_FIELD:
                value = as_object(change.get("value"), "change.value")
                echoes = as_list(value.get("message_echoes", []), "message_echoes")
                ignored.extend(ECHO for _ in echoes or [None])
                continue
            if field != "messages":
                ignored.append(f"{str(field)[:40]} notification")
                continue
            found, skipped = parse_change_value(as_object(change.get("value"), "change.value"))
            messages.extend(found)
            ignored.extend(skipped)
    return Parsed(messages=tuple(storable(m) for m in messages), ignored=tuple(ignored))


def parse_change_value(value: dict[str, Any]) -> tuple[list[InboundMessage], list[str]]:
    profiles = [profile_of(raw) for raw in as_list(value.get("contacts", []), "contacts")]
    metadata = as_object(value.get("metadata", {}), "metadata")
    # The business's own number: what it sends (to a group, say) is never a prospect's.
    business_number = text_field(metadata, "display_phone_number")
    own = "".join(ch for ch in business_number if ch.isdigit()) if business_number else None
    messages: list[InboundMessage] = []
    ignored = [STATUS_CALLBACK for _ in as_list(value.get("statuses", []), "statuses")]
    # Standby and coexistence deliveries may carry echoes of the business's own messages here.
    ignored += [ECHO for _ in as_list(value.get("message_echoes", []), "message_echoes")]
    errors = as_list(value.get("errors", []), "errors")
    if errors and not value.get("messages") and not value.get("statuses"):
        ignored.append(ERROR_NOTICE)
    for raw in as_list(value.get("messages", []), "messages"):
        message = as_object(raw, "message")
        kind = text_field(message, "type") or "unknown"
        if kind in _NOT_MESSAGES:
            ignored.append(_NOT_MESSAGES[kind])
            continue
        if kind == "system":
            parsed = parse_system(message)
            if parsed is None:
                ignored.append(SYSTEM_MESSAGE)
            else:
                messages.append(parsed)
            continue
        if own and text_field(message, "from") == own:
            ignored.append(ECHO)
            continue
        parsed = parse_message(message, kind, profiles)
        if parsed is None:
            ignored.append(NO_SENDER)
        else:
            messages.append(parsed)
    return messages, ignored


def profile_of(raw: Any) -> Profile:
    contact = as_object(raw, "contact")
    profile = as_object(contact.get("profile", {}), "contact.profile")
    username = text_field(profile, "username") or text_field(contact, "username")
    return Profile(
        wa_id=text_field(contact, "wa_id"),
        user_id=text_field(contact, "user_id"),
        name=text_field(profile, "name"),
        username=(username.lstrip("@") or None) if username else None,
    )


def sender_profile(
    wa_id: str | None, user_id: str | None, profiles: list[Profile]
) -> Profile | None:
    """The `contacts` entry of this message's sender: the one sharing its wa_id or user id."""
    for profile in profiles:
        if (wa_id and profile.wa_id == wa_id) or (user_id and profile.user_id == user_id):
            # An entry that names someone else by the other id is not this sender's.
            if wa_id and profile.wa_id and profile.wa_id != wa_id:
                continue
            if user_id and profile.user_id and profile.user_id != user_id:
                continue
            return profile
    if not wa_id and not user_id and len(profiles) == 1:
        # Meta's own contact_request example names the sender only in `contacts`.
        return profiles[0]
    return None


def parse_message(
    message: dict[str, Any], kind: str, profiles: list[Profile]
) -> InboundMessage | None:
    message_id = text_field(message, "id")
    if not message_id:
        raise MalformedRequestError("message without id")
    received_at = timestamp_of(message.get("timestamp"))
    sender = text_field(message, "from")
    user_id = text_field(message, "from_user_id")
    profile = sender_profile(sender, user_id, profiles)
    wa_id = sender or (profile.wa_id if profile else None)
    bsuid = user_id or (profile.user_id if profile else None)
    if not wa_id and not bsuid:
        return None
    text, media = content_of(message, kind)
    phone = international_e164(wa_id) if wa_id else None
    if phone is None and kind == "contacts" and message.get("origin") == CONTACT_REQUEST:
        phone = requested_phone(message)
    return InboundMessage(
        channel="whatsapp",
        provider_message_id=message_id,
        received_at=received_at,
        sender_id=wa_id,
        bsuid=bsuid,
        phone=phone,
        display_name=profile.name if profile else None,
        username=profile.username if profile else None,
        text=text,
        media=media,
        group_id=text_field(message, "group_id"),
    )


def requested_phone(message: dict[str, Any]) -> str | None:
    """The phone a user shared about themselves when the business asked for it."""
    for card in as_list(message.get("contacts", []), "shared contacts"):
        for raw in as_list(as_object(card, "contact card").get("phones", []), "phones"):
            number = text_field(as_object(raw, "phone"), "phone")
            phone = international_e164(number) if number else None
            if phone:
                return phone
    return None


def parse_system(message: dict[str, Any]) -> InboundMessage | None:
    """A changed number or user id: the new identities, the old ones retired.

    Meta's system notices carry no `contacts`; the new ids are in `system`, the old number in
    `from` and the old user id in `system.previous_user_id`.
    """
    message_id = text_field(message, "id")
    if not message_id:
        raise MalformedRequestError("message without id")
    received_at = timestamp_of(message.get("timestamp"))
    system = as_object(message.get("system", {}), "message.system")
    kind = text_field(system, "type")
    old_wa_id = text_field(message, "from")
    new_user_id = text_field(system, "user_id")
    old_user_id = text_field(system, "previous_user_id") or text_field(message, "from_user_id")
    retired: list[Identity] = []
    sender_id: str | None
    if old_user_id and old_user_id != new_user_id:
        retired.append(Identity("whatsapp_bsuid", old_user_id))
    if kind in CHANGED_NUMBER:
        new_wa_id = text_field(system, "wa_id") or text_field(system, "new_wa_id")
        if not new_wa_id:
            return None
        if old_wa_id and old_wa_id != new_wa_id:
            old_phone = international_e164(old_wa_id)
            retired[:0] = [Identity("whatsapp", old_wa_id)]
            if old_phone:
                retired.insert(1, Identity("phone", old_phone))
        sender_id = new_wa_id
    elif kind == CHANGED_USER_ID:
        if not new_user_id:
            return None
        # The number did not change; Meta may still name it in `from`.
        sender_id = old_wa_id
    else:
        return None
    return InboundMessage(
        channel="whatsapp",
        provider_message_id=message_id,
        received_at=received_at,
        sender_id=sender_id,
        bsuid=new_user_id,
        phone=international_e164(sender_id) if sender_id else None,
        text=text_field(system, "body"),
        retired=tuple(retired),
        system=True,
    )


def content_of(message: dict[str, Any], kind: str) -> tuple[str | None, tuple[Media, ...]]:
    """The words and attachments of one message, by its `type`."""
    if kind == "contacts":
        # The one type whose field is a list: cards of people, the sender's own or others'.
        return contacts_content(as_list(message.get("contacts", []), "shared contacts"))
    body = as_object(message.get(kind, {}), f"message.{kind}") if kind in message else {}
    if kind == "text":
        return text_field(body, "body"), ()
    if kind == "button":  # a quick-reply button of a template
        return text_field(body, "text"), ()
    if kind == "order":  # a cart sent from the catalog, with the note the person typed
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
    # "unsupported", "request_welcome" and types Meta adds later still come from a person: the
    # message is kept, without content, so the sender becomes a contact.
    return None, ()


def contacts_content(cards: list[Any]) -> tuple[str | None, tuple[Media, ...]]:
    """Shared cards as a line of text each (name and numbers) and one `contacts` media."""
    lines: list[str] = []
    names: list[str] = []
    for raw in cards:
        card = as_object(raw, "contact card")
        name = text_field(as_object(card.get("name", {}), "name"), "formatted_name")
        numbers = [
            text_field(as_object(phone, "phone"), "phone")
            for phone in as_list(card.get("phones", []), "phones")
        ]
        shown = ", ".join(number for number in numbers if number)
        if name:
            names.append(name)
        line = " ".join(part for part in (name, f"({shown})" if shown else None) if part)
        if line:
            lines.append(line)
    text = "Shared contact: " + "; ".join(lines) if lines else None
    return text, (Media(kind="contacts", caption=", ".join(names) or None),)


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
