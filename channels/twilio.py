"""Twilio Messaging webhooks: SMS/MMS, and WhatsApp through Twilio, verified and normalized.

Provider documentation:
- incoming message parameters: https://www.twilio.com/docs/messaging/guides/webhook-request
- status callbacks: https://www.twilio.com/docs/messaging/guides/track-outbound-message-status
- signatures (X-Twilio-Signature): https://www.twilio.com/docs/usage/webhooks/webhooks-security

Twilio posts one message per request as `application/x-www-form-urlencoded`. The same URL may
also receive status callbacks for messages the tenant sent; those are not from a person.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final
from urllib.parse import parse_qsl

from twilio.request_validator import RequestValidator, get_signature_algorithm

from channels.base import (
    Channel,
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

CONFIG_KEY: Final = "twilio_auth_token"
SIGNATURE_HEADER: Final = "x-twilio-signature"
# Present only when a Twilio Webhooks Rule signs with a SharedKey and names the algorithm.
SIGNATURE_SETTINGS_HEADER: Final = "x-twilio-webhooks-signature-settings"
WHATSAPP_PREFIX: Final = "whatsapp:"

STATUS_CALLBACK: Final = "status callback"
NOT_A_PHONE: Final = "sender is not a phone number (short code or alphanumeric id)"

# Statuses an inbound message carries (`SmsStatus=received`); any other status is a callback
# about a message the tenant sent, whose `From` is the tenant's own number.
_INBOUND_STATUSES: Final = frozenset({"received", "receiving"})
# Twilio accepts at most 10 media per message; anything far above is not Twilio's.
_MAX_MEDIA: Final = 50


class FormParams(dict[str, str]):
    """Posted form fields: the first value per name, and every value for the signature.

    Twilio signs every value of a repeated name, so the validator must see them all
    (`RequestValidator.get_values` asks for `getall`); the parser reads the first.
    """

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__()
        self._all: dict[str, list[str]] = {}
        for name, value in pairs:
            self._all.setdefault(name, []).append(value)
            self.setdefault(name, value)

    def getall(self, name: str) -> list[str]:
        return list(self._all[name])


def read_form(body: bytes) -> FormParams:
    """The posted fields, blank ones kept: Twilio signs blank parameters too."""
    # errors="replace" mirrors what web frameworks do; bytes Twilio never sends then simply
    # fail the signature instead of raising here.
    text = body.decode("utf-8", errors="replace")
    return FormParams(parse_qsl(text, keep_blank_values=True))


def verify(request: RawRequest, params: FormParams, auth_token: str) -> None:
    """Raise InvalidSignatureError unless Twilio signed this URL and these parameters."""
    signature = request.header(SIGNATURE_HEADER)
    if not signature:
        raise InvalidSignatureError("missing X-Twilio-Signature")
    algorithm = get_signature_algorithm(request.header(SIGNATURE_SETTINGS_HEADER))
    validator = RequestValidator(auth_token)
    if not validator.validate(request.url, params, signature, algorithm):
        raise InvalidSignatureError("X-Twilio-Signature does not match")


class TwilioAdapter:
    """`POST /webhooks/{tenant_id}/twilio`."""

    route = "twilio"

    def parse(self, request: RawRequest, secrets: Mapping[str, str], now: datetime) -> Parsed:
        auth_token = require_secret(secrets, CONFIG_KEY)
        if not request.header(SIGNATURE_HEADER):
            raise InvalidSignatureError("missing X-Twilio-Signature")
        params = read_form(request.body)
        verify(request, params, auth_token)
        return parse_params(params, now)


def parse_params(params: Mapping[str, str], now: datetime) -> Parsed:
    """The message a verified form carries, or why it carries none."""
    status = (params.get("MessageStatus") or params.get("SmsStatus") or "").strip().lower()
    inbound_shape = "Body" in params or "NumMedia" in params
    if status and (status not in _INBOUND_STATUSES or not inbound_shape):
        return Parsed(ignored=(STATUS_CALLBACK,))

    message_id = params.get("MessageSid") or params.get("SmsMessageSid") or params.get("SmsSid")
    if not message_id:
        raise MalformedRequestError("no MessageSid")
    sender = params.get("From", "").strip()
    if not sender:
        raise MalformedRequestError("no From")

    channel: Channel = "sms"
    address = sender
    if sender.lower().startswith(WHATSAPP_PREFIX):
        channel = "whatsapp"
        address = sender[len(WHATSAPP_PREFIX) :].strip()
    # Short codes and alphanumeric senders carry no `+`: they are not a person's phone.
    phone = international_e164(address) if address.startswith("+") else None
    if phone is None:
        return Parsed(ignored=(NOT_A_PHONE,))

    sender_id: str | None = None
    display_name: str | None = None
    if channel == "whatsapp":
        sender_id = params.get("WaId") or phone.lstrip("+")
        display_name = params.get("ProfileName") or None

    text = params.get("Body") or params.get("ButtonText") or None
    message = InboundMessage(
        channel=channel,
        provider_message_id=message_id,
        received_at=now,
        sender_id=sender_id,
        phone=phone,
        display_name=display_name,
        text=text,
        media=media_of(params),
    )
    return Parsed(messages=(storable(message),))


def media_of(params: Mapping[str, str]) -> tuple[Media, ...]:
    """MMS/WhatsApp attachments (`MediaUrl{N}`), and a WhatsApp location as kind "location"."""
    raw_count = params.get("NumMedia", "0").strip() or "0"
    if not raw_count.isdigit() or int(raw_count) > _MAX_MEDIA:
        raise MalformedRequestError(f"NumMedia is not a media count: {raw_count[:20]!r}")
    media: list[Media] = []
    for index in range(int(raw_count)):
        url = params.get(f"MediaUrl{index}")
        if not url:
            raise MalformedRequestError(f"NumMedia={raw_count} but no MediaUrl{index}")
        mime_type = params.get(f"MediaContentType{index}") or None
        media.append(Media(kind=kind_of(mime_type), mime_type=mime_type, url=url))
    latitude, longitude = params.get("Latitude"), params.get("Longitude")
    if latitude and longitude:
        caption = ", ".join(part for part in (params.get("Label"), params.get("Address")) if part)
        media.append(
            Media(kind="location", url=f"geo:{latitude},{longitude}", caption=caption or None)
        )
    return tuple(media)


def kind_of(mime_type: str | None) -> str:
    top = (mime_type or "").split("/", 1)[0].lower()
    return top if top in {"image", "audio", "video"} else "document"


ADAPTER: Final = TwilioAdapter()
