"""Twilio Messaging webhooks: SMS/MMS, and WhatsApp through Twilio, verified and normalized.

Provider documentation:
- incoming message parameters: https://www.twilio.com/docs/messaging/guides/webhook-request
- status callbacks: https://www.twilio.com/docs/messaging/guides/track-outbound-message-status
- signatures (X-Twilio-Signature): https://www.twilio.com/docs/usage/webhooks/webhooks-security
- RCS through a Messaging Service (`From=rcs:+…`): https://www.twilio.com/docs/rcs
- WhatsApp business-scoped user ids (`From=whatsapp:<BSUID>`, `ExternalUserId`,
  `ParentExternalUserId`): https://www.twilio.com/docs/whatsapp/business-scoped-user-ids

Twilio posts one message per request as `application/x-www-form-urlencoded`. The same URL may
also receive status callbacks for messages the tenant sent; those are not from a person.

RCS is the same person as their SMS: channel `sms`, the same phone, `transport="rcs"`. A
WhatsApp user who adopted a username arrives as `From=whatsapp:<BSUID>`, with the phone only in
`WaId` when Twilio may share it; the BSUID is then the identity, and the phone joins it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Final
from urllib.parse import parse_qsl

from twilio.request_validator import RequestValidator, get_signature_algorithm

from channels.base import (
    InboundMessage,
    InvalidSignatureError,
    MalformedRequestError,
    Media,
    Parsed,
    RawRequest,
    media_kind,
    require_secret,
)
from channels.phones import international_e164
from channels.text import storable

CONFIG_KEY: Final = "twilio_auth_token"
SIGNATURE_HEADER: Final = "x-twilio-signature"
# Present only when a Twilio Webhooks Rule signs with a SharedKey and names the algorithm.
SIGNATURE_SETTINGS_HEADER: Final = "x-twilio-webhooks-signature-settings"
WHATSAPP_PREFIX: Final = "whatsapp:"
RCS_PREFIX: Final = "rcs:"
# Meta's business-scoped user id: a country code, a dot and up to 128 letters and digits, e.g.
# US.13491208655302741918 (a parent id has ENT. after the country). Read loosely on purpose.
_BSUID: Final = re.compile(r"[A-Z]{2}\.[A-Za-z0-9.]{1,140}")

STATUS_CALLBACK: Final = "status callback"
NOT_A_PHONE: Final = "sender is not a phone number (short code or alphanumeric id)"
NOT_A_WHATSAPP_USER: Final = "whatsapp sender is neither a phone number nor a user id"

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

    lowered = sender.lower()
    if lowered.startswith(WHATSAPP_PREFIX):
        return _whatsapp(params, message_id, sender[len(WHATSAPP_PREFIX) :].strip(), now)
    transport: str | None = None
    address = sender
    if lowered.startswith(RCS_PREFIX):
        transport = "rcs"
        address = sender[len(RCS_PREFIX) :].strip()
    # Short codes and alphanumeric senders carry no `+`: they are not a person's phone.
    phone = international_e164(address) if address.startswith("+") else None
    if phone is None:
        return Parsed(ignored=(NOT_A_PHONE,))
    message = InboundMessage(
        channel="sms",
        provider_message_id=message_id,
        received_at=now,
        phone=phone,
        text=_text(params),
        media=media_of(params),
        transport=transport,
    )
    return Parsed(messages=(storable(message),))


def _whatsapp(params: Mapping[str, str], message_id: str, address: str, now: datetime) -> Parsed:
    """A WhatsApp sender named by number (`+…`) or by business-scoped user id, or both."""
    bsuid = params.get("ExternalUserId", "").strip() or None
    wa_id = params.get("WaId", "").strip() or None
    if address.startswith("+"):
        phone = international_e164(address)
        if phone is None:
            return Parsed(ignored=(NOT_A_WHATSAPP_USER,))
        wa_id = wa_id or phone.lstrip("+")
    elif _BSUID.fullmatch(address):
        # The From is the BSUID itself; Twilio adds the number in WaId only when it may.
        bsuid = address
        phone = international_e164(wa_id) if wa_id and wa_id.isdigit() else None
        wa_id = phone.lstrip("+") if phone else None
    else:
        return Parsed(ignored=(NOT_A_WHATSAPP_USER,))
    if bsuid is not None and not _BSUID.fullmatch(bsuid):
        bsuid = None  # not a shape we can vouch for as the sender's id: leave it out
    message = InboundMessage(
        channel="whatsapp",
        provider_message_id=message_id,
        received_at=now,
        sender_id=wa_id,
        bsuid=bsuid,
        phone=phone,
        display_name=params.get("ProfileName") or None,
        text=_text(params),
        media=media_of(params),
    )
    return Parsed(messages=(storable(message),))


def _text(params: Mapping[str, str]) -> str | None:
    return params.get("Body") or params.get("ButtonText") or None


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
        media.append(Media(kind=media_kind(mime_type), mime_type=mime_type, url=url))
    latitude, longitude = params.get("Latitude"), params.get("Longitude")
    if latitude and longitude:
        caption = ", ".join(part for part in (params.get("Label"), params.get("Address")) if part)
        media.append(
            Media(kind="location", url=f"geo:{latitude},{longitude}", caption=caption or None)
        )
    return tuple(media)


ADAPTER: Final = TwilioAdapter()
