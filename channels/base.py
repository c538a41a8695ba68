"""What every adapter hands the rest of Intake, the adapter protocol, and the errors it may raise.

Adapters are pure: no database, no Celery, no FastAPI. They verify a raw request with the
tenant's secrets and return the messages it carries, or say why it carries none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

Channel = Literal["whatsapp", "telegram", "sms", "email"]
CHANNELS: tuple[Channel, ...] = ("whatsapp", "telegram", "sms", "email")

# The kinds of identity a contact can hold; `models` keeps the same names.
IdentityKind = Literal["phone", "email", "whatsapp", "whatsapp_bsuid", "telegram"]


class ChannelError(Exception):
    """A request the provider (or an impostor) got wrong; `status` is the HTTP answer."""

    status = 400
    reason = "malformed"


class MalformedRequestError(ChannelError):
    status = 400
    reason = "malformed"


class InvalidSignatureError(ChannelError):
    status = 403
    reason = "signature"


class ReplayedRequestError(ChannelError):
    """A signed request seen before, or signed too long ago."""

    status = 403
    reason = "replay"


class ChannelNotConfiguredError(ChannelError):
    """The tenant has not set this channel's secret, so nothing can be verified."""

    status = 403
    reason = "not_configured"


@dataclass(frozen=True)
class Media:
    kind: str  # image, audio, video, document, sticker, location, …
    mime_type: str | None = None
    url: str | None = None
    provider_id: str | None = None  # the provider's file or media id, to fetch it later
    filename: str | None = None
    caption: str | None = None


def media_kind(mime_type: str | None) -> str:
    """The Media kind of an attachment by its MIME type: image, audio, video or document."""
    major = (mime_type or "").split("/", 1)[0].strip().lower()
    return major if major in ("image", "audio", "video") else "document"


@dataclass(frozen=True)
class Identity:
    """One way a provider names a person: `("phone", "+15551234567")`, `("telegram", "42")`."""

    kind: IdentityKind
    value: str


@dataclass(frozen=True)
class InboundMessage:
    """One message from a person, normalized. It is the only thing adapters hand on.

    Every identity on it (sender id, BSUID, phone, email) is one the provider vouches for as
    the sender's own, so together they are an attested link. A number or address that merely
    appears in the message (a shared card of someone else, text) is never put here.
    """

    channel: Channel
    provider_message_id: str
    received_at: datetime
    sender_id: str | None = None  # the channel's own id: Telegram user id, WhatsApp wa_id
    bsuid: str | None = None  # WhatsApp business-scoped user id (Meta `user_id`, Twilio's)
    phone: str | None = None  # E.164 where the channel gives a number
    email: str | None = None  # lowercased
    display_name: str | None = None
    username: str | None = None  # Telegram or WhatsApp username, without the @: never a key
    language: str | None = None  # ISO 639-1, where the channel says it
    text: str | None = None
    media: tuple[Media, ...] = ()
    # Identities the sender no longer has (WhatsApp `user_changed_number`'s old number):
    # retired, so that whoever gets them next is a new person.
    retired: tuple[Identity, ...] = ()
    # A provider's notice about the sender (a changed number or id), not words they wrote.
    system: bool = False
    transport: str | None = None  # the carrier within a channel where it has several: "rcs"
    group_id: str | None = None  # the WhatsApp group the message was written in
    business_connection_id: str | None = None  # Telegram Business: the connected account

    def identities(self) -> tuple[Identity, ...]:
        """The sender's identities in matching order: channel id, BSUID, phone, email."""
        found: list[Identity] = []
        if self.sender_id and self.channel == "whatsapp":
            found.append(Identity("whatsapp", self.sender_id))
        elif self.sender_id and self.channel == "telegram":
            found.append(Identity("telegram", self.sender_id))
        if self.bsuid:
            found.append(Identity("whatsapp_bsuid", self.bsuid))
        if self.phone:
            found.append(Identity("phone", self.phone))
        if self.email:
            found.append(Identity("email", self.email))
        return tuple(found)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["received_at"] = self.received_at.astimezone(UTC).isoformat()
        data["media"] = [asdict(m) for m in self.media]
        data["retired"] = [asdict(i) for i in self.retired]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InboundMessage:
        values = dict(data)
        values["received_at"] = datetime.fromisoformat(values["received_at"])
        values["media"] = tuple(Media(**m) for m in values.get("media", ()))
        values["retired"] = tuple(Identity(**i) for i in values.get("retired", ()))
        return cls(**values)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class RawRequest:
    """A webhook request as it arrived: the public URL it was sent to, headers, body bytes."""

    method: str
    url: str  # the public URL, as the provider signed it (query string included)
    headers: Mapping[str, str]  # lowercased names
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Parsed:
    """What a verified request carries: messages, why others were skipped, a nonce to burn."""

    messages: tuple[InboundMessage, ...] = ()
    ignored: tuple[str, ...] = ()  # reasons, e.g. "status callback", "bot sender"
    nonce: str | None = None  # a one-time token (Mailgun) to mark used when stored
    reply: str | None = None  # a body to answer with instead of the default (a GET challenge)


class ChannelAdapter(Protocol):
    """One provider's webhook. `route` is its path under /webhooks/{tenant_id}/."""

    route: str

    def parse(self, request: RawRequest, secrets: Mapping[str, str], now: datetime) -> Parsed:
        """Verify, then parse. Raise a ChannelError for a request that must be refused."""
        ...


def require_secret(secrets: Mapping[str, str], name: str) -> str:
    value = secrets.get(name)
    if not value:
        raise ChannelNotConfiguredError(f"{name} is not configured for this tenant")
    return value
