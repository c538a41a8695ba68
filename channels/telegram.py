"""The Telegram Bot API webhook: one `Update` in, at most one person's message out.

Provider docs: https://core.telegram.org/bots/api#setwebhook (the `secret_token` that Telegram
echoes in `X-Telegram-Bot-Api-Secret-Token`) and https://core.telegram.org/bots/api#update.

Telegram does not sign the body; it sends the secret token set with `setWebhook` on every
request, so the header is the whole proof and is compared in constant time.

Edited messages are ignored (reason "edited message"): an edit is not a new message, and the
original was already ingested under the same chat and message id. Updates that carry no
message from a person (channel posts, callback queries, membership changes, …) and messages
whose sender is a bot are ignored with a reason as well.
"""

from __future__ import annotations

import hmac
import json
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
    "business_message": "business message",
    "edited_business_message": "edited message",
    "callback_query": "callback query",
    "inline_query": "inline query",
    "my_chat_member": "membership change",
    "chat_member": "membership change",
}


class TelegramAdapter:
    route = "telegram"

    def parse(self, request: RawRequest, secrets: Mapping[str, str], now: datetime) -> Parsed:
        """Check the secret token header, then read the Update it carries."""
        verify_secret_token(request, require_secret(secrets, SECRET_NAME))
        update = _load_update(request.body)
        if update.message is None:
            return Parsed(ignored=(_reason_for_non_message(update),))
        message = update.message
        user = message.from_user
        if user is None:
            # Anonymous group admins and channels posting in groups have a sender_chat instead.
            return Parsed(ignored=("no person sender",))
        if user.is_bot:
            return Parsed(ignored=("bot sender",))
        return Parsed(messages=(storable(_inbound_from(message)),))


def verify_secret_token(request: RawRequest, expected: str) -> None:
    given = request.header(SECRET_HEADER)
    if given is None:
        raise InvalidSignatureError(f"missing {SECRET_HEADER} header")
    # Bytes, not str: compare_digest refuses non-ASCII strings, and a header may hold anything.
    if not hmac.compare_digest(_bytes(given), _bytes(expected)):
        raise InvalidSignatureError(f"wrong {SECRET_HEADER} header")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _load_update(body: bytes) -> Update:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # ValueError covers bad UTF-8 and bad JSON
        raise MalformedRequestError("body is not JSON") from exc
    if not isinstance(data, dict):
        raise MalformedRequestError("body is not a JSON object")
    try:
        update = Update.de_json(data, bot=None)
    # python-telegram-bot builds objects from whatever it is given without validating types, so
    # a hostile body fails in many ways (TypeError, AttributeError, OverflowError, …): any
    # failure to build the Update means the body is not one.
    except Exception as exc:
        raise MalformedRequestError("body is not a Telegram Update") from exc
    if update.message is not None:
        _check_message_shape(update.message)
    return update


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
    if not all(checks):
        raise MalformedRequestError("message fields have the wrong types")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_str(value: object) -> bool:
    return value is None or isinstance(value, str)


def _reason_for_non_message(update: Update) -> str:
    for field, reason in _NOT_A_PERSON_MESSAGE.items():
        if getattr(update, field, None) is not None:
            return reason
    return "not a message"


def _inbound_from(message: Message) -> InboundMessage:
    user = message.from_user
    assert user is not None  # the caller has checked
    name = " ".join(part for part in (user.first_name, user.last_name) if part).strip()
    return InboundMessage(
        channel="telegram",
        provider_message_id=f"{message.chat.id}:{message.message_id}",
        received_at=message.date.astimezone(UTC),
        sender_id=str(user.id),
        phone=_own_phone(message, user.id),
        display_name=name or None,
        username=user.username or None,
        language=_language(user.language_code),
        text=_text(message),
        media=_media(message),
    )


def _text(message: Message) -> str | None:
    text = message.text if message.text is not None else message.caption
    return text if text else None


def _language(code: str | None) -> str | None:
    """ISO 639-1 from an IETF tag such as `pt-br`; None when the tag does not start with one."""
    if not code:
        return None
    prefix = code[:2].lower()
    if len(prefix) == 2 and prefix.isascii() and prefix.isalpha():
        return prefix
    return None


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
    return isinstance(value, int | float) and not isinstance(value, bool)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


ADAPTER = TelegramAdapter()
