"""RFC 5322 reading shared by the email adapters: sender, Message-ID, date, and not-a-person tests.

Mailgun hands headers over as a JSON list of `[name, value]` pairs and the raw adapter parses a
whole message, so both reduce to a list of `(name, value)` pairs before these functions see them.
Auto-replies and bounces are recognised by the signals of RFC 3834 (`Auto-Submitted`), RFC 3464
(`multipart/report; report-type=delivery-status`), the de facto `Precedence` and `X-Autoreply`
headers, and the mailer-daemon / postmaster senders that bounces come from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.errors import HeaderParseError
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser

from channels.base import InboundMessage, Media
from channels.text import storable

Headers = Sequence[tuple[str, str]]

_AUTOMATED_PRECEDENCE = {"bulk", "junk", "auto_reply"}
_AUTOMATED_LOCAL_PARTS = {"mailer-daemon", "postmaster"}
_AUTOREPLY_HEADERS = {"x-autoreply", "x-autorespond"}
# The email package has known crashes on hostile input, beyond the defects it records.
MIME_ERRORS = (
    HeaderParseError,
    ValueError,
    IndexError,
    AttributeError,
    TypeError,
    KeyError,
    LookupError,
    UnicodeError,
    AssertionError,
)


@dataclass(frozen=True)
class Mailbox:
    address: str  # lowercased
    display_name: str | None


def header_values(headers: Headers, name: str) -> list[str]:
    wanted = name.lower()
    return [value for key, value in headers if key.lower() == wanted]


def first_header(headers: Headers, name: str) -> str | None:
    values = header_values(headers, name)
    return values[0] if values else None


def parse_mailbox(value: str | None) -> Mailbox | None:
    """The first mailbox of an address header, its display name decoded (RFC 2047)."""
    if not value or not value.strip():
        return None
    try:
        header = policy.default.header_factory("from", value)
        addresses = header.addresses
        if not addresses:
            return None
        address = addresses[0].addr_spec
        name = addresses[0].display_name
    except MIME_ERRORS:
        return None
    if not isinstance(address, str) or not _looks_like_address(address):
        return None
    display_name = name.strip() if isinstance(name, str) and name.strip() else None
    return Mailbox(address=address.lower(), display_name=display_name)


def _looks_like_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain) and not any(ch.isspace() for ch in address)


def automated_reason(
    headers: Headers, *, senders: Iterable[str | None], content_type: str | None
) -> str | None:
    """Why this message is an auto-reply or a bounce rather than a person writing, if it is.

    `senders` are every address the message claims to come from: the From header, the envelope
    sender (Return-Path / Mailgun's `sender`).
    """
    # Bounces first, so that a bounce (which also says Auto-Submitted) is named as one.
    if content_type and content_type.split(";", 1)[0].strip().lower() == "multipart/report":
        return "delivery report"
    for sender in senders:
        if sender and _local_part(sender) in _AUTOMATED_LOCAL_PARTS:
            return "mailer-daemon sender"
    for value in header_values(headers, "auto-submitted"):
        if value.split(";", 1)[0].strip().lower() not in ("", "no"):
            return "auto-submitted"
    for value in header_values(headers, "precedence"):
        if value.strip().lower() in _AUTOMATED_PRECEDENCE:
            return "precedence " + value.strip().lower()
    if any(name.lower() in _AUTOREPLY_HEADERS for name, _ in headers):
        return "auto-reply"
    for value in header_values(headers, "return-path"):
        # RFC 5321: notifications such as bounces are sent with a null reverse-path.
        if value.strip() == "<>":
            return "null return path"
    return None


def _local_part(sender: str) -> str:
    """The local part, also of a bare `MAILER-DAEMON` that is no address at all."""
    mailbox = parse_mailbox(sender)
    address = mailbox.address if mailbox else sender.strip().strip("<>").lower()
    return address.split("@", 1)[0].strip()


def decoded_header(name: str, value: str | None) -> str | None:
    """An unstructured header's text with RFC 2047 encoded words decoded and folding removed."""
    if value is None:
        return None
    try:
        text = str(policy.default.header_factory(name, value))
    except MIME_ERRORS:
        text = value
    text = " ".join(text.split())
    return text or None


def clean_message_id(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().strip("<>").strip()
    return text or None


def fallback_message_id(
    *, sender: str, date: str | None, subject: str | None, text: str | None
) -> str:
    """A stable id for a message without a Message-ID, so that a redelivery is still recognised.

    Built from what the sender wrote, not from the transport, which may differ between deliveries.
    """
    digest = hashlib.sha256()
    for part in (sender, date or "", subject or "", text or ""):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return "sha256:" + digest.hexdigest()


def received_at(date: str | None, now: datetime) -> datetime:
    """The Date header in UTC; `now` when it is missing, unreadable or in the future."""
    if not date:
        return now
    try:
        when = parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError, OverflowError):
        return now
    if when.tzinfo is None:  # RFC 5322 `-0000`: the sender's zone is unknown, UTC is the best guess
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    # A sender whose clock runs ahead must not put its message above newer ones.
    return min(when, now.astimezone(UTC))


def message_text(subject: str | None, body: str | None) -> str | None:
    """The subject as the first line, then the body: a prospect's subject line often says it all."""
    parts = [_lf(part).strip() for part in (subject, body) if part and part.strip()]
    return "\n\n".join(parts) or None


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def media_kind(mime_type: str | None) -> str:
    major = (mime_type or "").split("/", 1)[0].lower()
    return major if major in ("image", "audio", "video") else "document"


def attachment(mime_type: str | None, filename: str | None, url: str | None = None) -> Media:
    return Media(
        kind=media_kind(mime_type),
        mime_type=mime_type or None,
        filename=filename or None,
        url=url or None,
    )


class _TextOfHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head"):
            self._skipping += 1
        elif tag in ("br", "p", "div", "tr", "li"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head") and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


# The HTML read for a message's text: html.parser is pure Python (a 25 MiB page takes seconds
# of CPU), and what a prospect wrote is in the first part of a page, not in megabytes of markup.
MAX_HTML_CHARS = 512 * 1024


def text_of_html(html: str) -> str:
    """The visible text of the first MAX_HTML_CHARS of `html`, one line a block."""
    parser = _TextOfHtml()
    parser.feed(html[:MAX_HTML_CHARS])
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def inbound_email(
    *,
    mailbox: Mailbox,
    subject: str | None,
    body: str | None,
    message_id: str | None,
    date: str | None,
    media: Sequence[Media],
    now: datetime,
) -> InboundMessage:
    """The one InboundMessage shape of an email, however it arrived (Mailgun or raw)."""
    text = message_text(subject, body)
    provider_id = clean_message_id(message_id) or fallback_message_id(
        sender=mailbox.address, date=date, subject=subject, text=text
    )
    return storable(
        InboundMessage(
            channel="email",
            provider_message_id=provider_id,
            received_at=received_at(date, now),
            email=mailbox.address,
            display_name=mailbox.display_name,
            text=text,
            media=tuple(media),
        )
    )
