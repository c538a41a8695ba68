"""The Telegram Bot API webhook: one `Update` in, at most one person's message out.

Provider docs: https://core.telegram.org/bots/api#setwebhook (the `secret_token` that Telegram
echoes in `X-Telegram-Bot-Api-Secret-Token`), https://core.telegram.org/bots/api#update, and
Telegram Business: https://core.telegram.org/bots/api#businessconnection and
https://core.telegram.org/bots/features#bots-for-business.

Telegram does not sign the body; it sends the secret token set with `setWebhook` on every
request, so the header is the whole proof and is compared in constant time.

Edited messages are ignored (reason "edited message"): an edit is not a new message, and the
original was already ingested under the same chat and message id. Updates that carry no
message from a person (channel posts, callback queries, membership changes, …), service
messages (a pin, members joining, a changed title, …) and messages whose sender is a bot are
ignored with a reason as well.

Telegram Business: a bot connected to a business account gets that account's private chats as
`business_message` updates. In a private chat `chat.id` is the customer's user id, so a message
whose `from.id` is someone else (or that a business bot sent, `sender_business_bot`) is the
account owner's own reply: outbound, not a prospect. A customer's message is theirs, recorded
with its `business_connection_id`; its provider id includes that connection, because the same
customer's chat with the bot itself has the same chat id and its own message ids.

Updates written before a field existed (Telegram's own examples have no `is_bot`) still parse:
a user object without `is_bot` is read as a person.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from telegram import Message, Update

from channels.base import (
    InboundMessage,
    InvalidSignatureError,
    MalformedRequestError,
    Media,
    Parsed,
    RawRequest,
    require_secret,
)
from channels.languages import language_of
from channels.phones import international_e164
from channels.text import storable

# Names of a tenant setting and of a header, not secrets themselves.
SECRET_NAME = "telegram_secret_token"  # noqa: S105
SECRET_HEADER = "x-telegram-bot-api-secret-token"  # noqa: S105

# Update fields that are something other than a new message from a person, and why we skip them.
_NOT_A_PERSON_MESSAGE = {
    "edited_message": "edited message",
    "channel_post": "channel post",
    "edited_channel_post": "channel post",
    "edited_business_message": "edited message",
    "deleted_business_messages": "deleted messages",
    "business_connection": "business connection",
    "callback_query": "callback query",
    "inline_query": "inline query",
    "my_chat_member": "membership change",
    "chat_member": "membership change",
    "chat_join_request": "join request",
    "message_reaction": "reaction",
    "message_reaction_count": "reaction",
    "poll": "poll update",
    "poll_answer": "poll update",
    "chosen_inline_result": "inline query",
    "shipping_query": "payment query",
    "pre_checkout_query": "payment query",
    "purchased_paid_media": "payment query",
    "chat_boost": "chat boost",
    "removed_chat_boost": "chat boost",
    # Bot API 10: a guest bot summoned into someone else's chat, and a managed bot's changes.
    "guest_message": "guest message",
    "managed_bot": "managed bot",
}
BUSINESS_OWNER = "business owner message"
SERVICE_MESSAGE = "service message"
# Message fields that make it a service message: something that happened in the chat, not
# words from the prospect. https://core.telegram.org/bots/api#message
_SERVICE_FIELDS = (
    "pinned_message",
    "new_chat_members",
    "left_chat_member",
    "new_chat_title",
    "new_chat_photo",
    "delete_chat_photo",
    "group_chat_created",
    "supergroup_chat_created",
    "channel_chat_created",
    "message_auto_delete_timer_changed",
    "migrate_to_chat_id",
    "migrate_from_chat_id",
    "successful_payment",
    "refunded_payment",
    "users_shared",
    "chat_shared",
    "connected_website",
    "write_access_allowed",
    "proximity_alert_triggered",
    "boost_added",
    "chat_background_set",
    "forum_topic_created",
    "forum_topic_edited",
    "forum_topic_closed",
    "forum_topic_reopened",
    "general_forum_topic_hidden",
    "general_forum_topic_unhidden",
    "giveaway_created",
    "giveaway_completed",
    "giveaway_winners",
    "video_chat_scheduled",
    "video_chat_started",
    "video_chat_ended",
    "video_chat_participants_invited",
    "gift",
    "unique_gift",
    "gift_upgrade_sent",
    "checklist_tasks_done",
    "checklist_tasks_added",
    "direct_message_price_changed",
    "paid_message_price_changed",
    "suggested_post_approved",
    "suggested_post_approval_failed",
    "suggested_post_declined",
    "suggested_post_paid",
    "suggested_post_refunded",
    "chat_owner_changed",
    "chat_owner_left",
    "managed_bot_created",
    "poll_option_added",
    "poll_option_deleted",
    "web_app_data",
)
# Update fields that may hold a person's new message.
_PERSON_FIELDS = ("message", "business_message")
# The message fields a person's message is read for (see _inbound_from and its checks).
_READ_FIELDS = frozenset(
    {
        "message_id",
        "date",
        "chat",
        "from",
        "sender_chat",
        "is_automatic_forward",
        "business_connection_id",
        "sender_business_bot",
        "text",
        "caption",
        "photo",
        "document",
        "audio",
        "voice",
        "video",
        "video_note",
        "sticker",
        "contact",
        "location",
    }
)
# Update fields that hold a message and whose sender is a Bot API User; each of their users
# gets `is_bot` when an older update leaves it out.
_MESSAGE_FIELDS = (
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_message",
    "edited_business_message",
)


class TelegramAdapter:
    route = "telegram"

    def parse(self, request: RawRequest, secrets: Mapping[str, str], now: datetime) -> Parsed:
        """Check the secret token header, then read the Update it carries."""
        verify_secret_token(request, require_secret(secrets, SECRET_NAME))
        data = _load_json(request.body)
        if all(data.get(field) is None for field in _PERSON_FIELDS):
            # Read from the JSON, not through python-telegram-bot: an update we skip must never
            # be a 400 because the library's idea of its shape (a poll, a reaction) differs.
            return Parsed(ignored=(_reason_for_non_message(data),))
        # Service messages are told by the JSON, so that one is known as such even when its
        # message has to be read again from the fields below (see _load_update).
        service = any(
            isinstance(raw, dict) and any(raw.get(name) for name in _SERVICE_FIELDS)
            for raw in (data.get(field) for field in _PERSON_FIELDS)
        )
        update = _load_update(data)
        message = update.message or update.business_message
        if message is None:
            return Parsed(ignored=(_reason_for_non_message(data),))
        user = message.from_user
        if user is None:
            # Anonymous group admins and channels posting in groups have a sender_chat instead.
            return Parsed(ignored=("no person sender",))
        if message.sender_chat is not None:
            # Sent on behalf of a chat: `from` is a placeholder (Telegram's 777000 for a
            # channel post forwarded to its discussion group, @GroupAnonymousBot, @Channel_Bot).
            return Parsed(ignored=(_on_behalf_of_chat(message),))
        if message.business_connection_id is not None and _sent_by_business(message, user.id):
            return Parsed(ignored=(BUSINESS_OWNER,))
        if user.is_bot:
            return Parsed(ignored=("bot sender",))
        if service:
            return Parsed(ignored=(SERVICE_MESSAGE,))
        return Parsed(messages=(storable(_inbound_from(message)),))


def _sent_by_business(message: Message, user_id: int) -> bool:
    """The account owner's own message (or its business bot's) in a customer's chat."""
    if message.sender_business_bot is not None:
        return True
    return message.chat.type == "private" and message.chat.id != user_id


def verify_secret_token(request: RawRequest, expected: str) -> None:
    given = request.header(SECRET_HEADER)
    if given is None:
        raise InvalidSignatureError(f"missing {SECRET_HEADER} header")
    # Bytes, not str: compare_digest refuses non-ASCII strings, and a header may hold anything.
    if not hmac.compare_digest(_bytes(given), _bytes(expected)):
        raise InvalidSignatureError(f"wrong {SECRET_HEADER} header")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _load_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # ValueError covers bad UTF-8 and bad JSON
        raise MalformedRequestError("body is not JSON") from exc
    if not isinstance(data, dict):
        raise MalformedRequestError("body is not a JSON object")
    if not _is_int(data.get("update_id")):
        raise MalformedRequestError("body is not a Telegram Update: no update_id")
    return data


def _on_behalf_of_chat(message: Message) -> str:
    chat_type = getattr(message.sender_chat, "type", None)
    if message.is_automatic_forward or chat_type == "channel":
        return "channel post"
    return "no person sender"


def _load_update(data: dict[str, Any]) -> Update:
    _default_is_bot(data)
    try:
        update = _de_json(data)
    except MalformedRequestError:
        # The library also refuses a message for a nested object whose shape it expects
        # otherwise (a reply to a poll, a quote, a game): read again from only the fields a
        # person's message is read for, a person's words are never a 400 for what is beside them.
        update = _de_json(_reduced(data))
    for message in (update.message, update.business_message):
        if message is not None:
            _check_message_shape(message)
    return update


def _de_json(data: dict[str, Any]) -> Update:
    try:
        return Update.de_json(data, bot=None)
    # python-telegram-bot builds objects from whatever it is given without validating types, so
    # a hostile body fails in many ways (TypeError, AttributeError, OverflowError, …): any
    # failure to build the Update means the body is not one.
    except Exception as exc:
        raise MalformedRequestError("body is not a Telegram Update") from exc


def _reduced(data: dict[str, Any]) -> dict[str, Any]:
    """The update with its message cut down to the fields _inbound_from and the checks read."""
    reduced: dict[str, Any] = {"update_id": data["update_id"]}
    for field in _PERSON_FIELDS:
        message = data.get(field)
        if message is not None:
            reduced[field] = (
                {k: v for k, v in message.items() if k in _READ_FIELDS}
                if isinstance(message, dict)
                else message
            )
    return reduced


def _default_is_bot(data: dict[str, Any]) -> None:
    """Give `is_bot: false` to message senders that lack it, as Telegram's older examples do."""
    for field in _MESSAGE_FIELDS:
        message = data.get(field)
        if isinstance(message, dict):
            sender = message.get("from")
            if isinstance(sender, dict):
                sender.setdefault("is_bot", False)


def _check_message_shape(message: Message) -> None:
    """Refuse the few fields we rely on when their types are not what the Bot API promises."""
    user = message.from_user
    checks = [
        _is_int(message.message_id),
        _is_int(getattr(message.chat, "id", None)),
        isinstance(message.date, datetime),
        message.text is None or isinstance(message.text, str),
        message.caption is None or isinstance(message.caption, str),
    ]
    if user is not None:
        checks += [
            _is_int(getattr(user, "id", None)),
            isinstance(getattr(user, "first_name", None), str),
            _optional_str(getattr(user, "last_name", None)),
            _optional_str(getattr(user, "username", None)),
            _optional_str(getattr(user, "language_code", None)),
        ]
    if message.location is not None:
        # NaN and infinities are JSON Python accepts and no place on Earth.
        checks += [
            _is_number(getattr(message.location, "latitude", None)),
            _is_number(getattr(message.location, "longitude", None)),
        ]
    if message.business_connection_id is not None:
        checks.append(isinstance(message.business_connection_id, str))
    if not all(checks):
        raise MalformedRequestError("message fields have the wrong types")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_str(value: object) -> bool:
    return value is None or isinstance(value, str)


def _reason_for_non_message(data: Mapping[str, Any]) -> str:
    for field, reason in _NOT_A_PERSON_MESSAGE.items():
        if data.get(field) is not None:
            return reason
    return "not a message"


def _inbound_from(message: Message) -> InboundMessage:
    user = message.from_user
    assert user is not None  # the caller has checked
    name = " ".join(part for part in (user.first_name, user.last_name) if part).strip()
    connection = message.business_connection_id
    key = f"{message.chat.id}:{message.message_id}"
    return InboundMessage(
        channel="telegram",
        provider_message_id=f"business:{connection}:{key}" if connection else key,
        received_at=message.date.astimezone(UTC),
        sender_id=str(user.id),
        phone=_own_phone(message, user.id),
        display_name=name or None,
        username=user.username or None,
        language=language_of(user.language_code),
        text=_text(message),
        media=_media(message),
        business_connection_id=connection,
    )


def _text(message: Message) -> str | None:
    text = message.text if message.text is not None else message.caption
    return text if text else None


def _own_phone(message: Message, user_id: int) -> str | None:
    """The sender's phone, only when the contact they share is their own."""
    contact = message.contact
    if contact is None or getattr(contact, "user_id", None) != user_id:
        return None
    number = getattr(contact, "phone_number", None)
    return international_e164(number) if isinstance(number, str) else None


def _media(message: Message) -> tuple[Media, ...]:
    caption = message.caption or None
    found: list[Media] = []
    if message.photo:
        # Telegram lists a photo in several sizes; the largest is the one worth fetching.
        largest = max(message.photo, key=lambda size: _area(size.width, size.height))
        found.append(Media(kind="image", provider_id=_str(largest.file_id), caption=caption))
    files: list[tuple[str, Any]] = [
        ("document", message.document),
        ("audio", message.audio),
        ("audio", message.voice),
        ("video", message.video),
        ("video", message.video_note),
        ("sticker", message.sticker),
    ]
    for kind, item in files:
        if item is None:
            continue
        found.append(
            Media(
                kind=kind,
                mime_type=_str(getattr(item, "mime_type", None)),
                provider_id=_str(getattr(item, "file_id", None)),
                filename=_str(getattr(item, "file_name", None)),
                caption=caption,
            )
        )
    if message.location is not None:
        latitude = getattr(message.location, "latitude", None)
        longitude = getattr(message.location, "longitude", None)
        if _is_number(latitude) and _is_number(longitude):
            found.append(Media(kind="location", url=f"geo:{latitude},{longitude}"))
    return tuple(found)


def _area(width: Any, height: Any) -> int:
    return width * height if _is_int(width) and _is_int(height) else 0


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


ADAPTER = TelegramAdapter()
