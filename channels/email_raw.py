"""The raw email webhook: a whole RFC 5322 message POSTed by an MTA or relay, signed by us.

There is no provider to link: the relay (a Postfix pipe, an AWS SES or Cloudflare Email Worker
forward, …) signs the exact body bytes with the tenant's `email_webhook_secret` and sends
`X-Intake-Signature: sha256=<hex HMAC-SHA256>`. The message is read with the standard library
(RFC 5322 with RFC 2047 encoded words, MIME per RFC 2045-2049, and raw UTF-8 headers per
RFC 6532: a stray byte that is not UTF-8 becomes U+FFFD, which spoils a display name but is
refused in an address).

Mailgun's `forward()` to a URL ending in `mime` posts the same whole message as `body-mime`;
the Mailgun adapter reads it with `parse_message` here.

A message without a Message-ID gets a stable id hashed from its sender, Date, Subject and text
(see `email_parse.fallback_message_id`), so a relay delivering it twice still records it once.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from email import policy
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser

from channels import email_parse
from channels.base import (
    InvalidSignatureError,
    MalformedRequestError,
    Media,
    Parsed,
    RawRequest,
    require_secret,
)

SECRET_NAME = "email_webhook_secret"  # noqa: S105  # the setting's name, not a secret
SIGNATURE_HEADER = "x-intake-signature"
_SCHEME = "sha256="


class RawEmailAdapter:
    route = "email/raw"

    def parse(self, request: RawRequest, secrets: Mapping[str, str], now: datetime) -> Parsed:
        """Check the body's HMAC, then read the message it is."""
        verify_signature(request, require_secret(secrets, SECRET_NAME))
        return parse_message(request.body, now)


def sign(body: bytes, secret: str) -> str:
    """The header value a relay sends for `body`: `sha256=` and the hex HMAC-SHA256."""
    return _SCHEME + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(request: RawRequest, secret: str) -> None:
    given = request.header(SIGNATURE_HEADER)
    if given is None:
        raise InvalidSignatureError(f"missing {SIGNATURE_HEADER} header")
    given = given.strip()
    if not given.lower().startswith(_SCHEME):
        raise InvalidSignatureError(f"{SIGNATURE_HEADER} is not sha256=<hex>")
    expected = sign(request.body, secret)
    given_bytes = (_SCHEME + given[len(_SCHEME) :].lower()).encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(given_bytes, expected.encode("ascii")):
        raise InvalidSignatureError(f"wrong {SIGNATURE_HEADER}")


def parse_message(body: bytes, now: datetime, *, envelope_sender: str | None = None) -> Parsed:
    """The message a whole RFC 5322 body is, or why it is not a person's.

    `envelope_sender` is the SMTP MAIL FROM where the relay knows it apart from the headers.
    """
    try:
        message = BytesParser(policy=policy.default).parsebytes(body)
    except email_parse.MIME_ERRORS as exc:
        raise MalformedRequestError("body is not an RFC 5322 message") from exc
    if not isinstance(message, EmailMessage):
        raise MalformedRequestError("body is not an RFC 5322 message")
    # Raw values, parsed only where needed: fetching a header through the policy parses it, and
    # a hostile header must not sink the whole message.
    headers = [
        (name, email_parse.utf8_header(_unfold(value))) for name, value in message.raw_items()
    ]
    sender = email_parse.first_header(headers, "from")
    reason = email_parse.automated_reason(
        headers,
        senders=(
            sender,
            email_parse.first_header(headers, "return-path"),
            email_parse.first_header(headers, "sender"),
            envelope_sender,
        ),
        content_type=email_parse.first_header(headers, "content-type"),
    )
    if reason:
        return Parsed(ignored=(reason,))
    mailbox = email_parse.parse_mailbox(sender)
    if mailbox is None:
        raise MalformedRequestError("the message has no usable From address")
    inbound = email_parse.inbound_email(
        mailbox=mailbox,
        subject=email_parse.decoded_header("subject", email_parse.first_header(headers, "subject")),
        body=_body_text(message),
        message_id=email_parse.first_header(headers, "message-id"),
        date=email_parse.first_header(headers, "date"),
        media=_attachments(message),
        now=now,
    )
    return Parsed(messages=(inbound,))


def _unfold(value: str) -> str:
    return value.replace("\r\n", "").replace("\n", "").replace("\r", "")


def _body_text(message: EmailMessage) -> str | None:
    """The text/plain body, or the text of the HTML one when that is all there is."""
    try:
        part = message.get_body(preferencelist=("plain", "html"))
        if part is None:
            return None
        content = _decoded_text(part)
        if content is None:
            return None
        if part.get_content_subtype() == "html":
            return email_parse.text_of_html(content)
    except email_parse.MIME_ERRORS:
        return None
    return content


# What a charset label means when it says nothing: none given (RFC 2045's us-ascii default),
# Postfix's and Exchange's `unknown-8bit`, or a name Python does not know.
_UNDECLARED_CHARSETS = frozenset({"", "us-ascii", "ascii", "unknown-8bit", "x-unknown"})


def _decoded_text(part: MIMEPart) -> str | None:
    """A text part's content in its declared charset; 8-bit bytes under no usable charset
    (an 8BITMIME body in Latin-1 sent without a label) read as UTF-8, failing that cp1252."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return None
    charset = (part.get_content_charset() or "").strip().lower()
    if charset not in _UNDECLARED_CHARSETS:
        try:
            return payload.decode(charset, "replace")
        except LookupError:
            pass
    if payload.isascii():
        return payload.decode("ascii")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        # cp1252 is what mail clients mean by Latin-1 (its 0x80-0x9f are quotes and dashes).
        return payload.decode("cp1252", "replace")


def _attachments(message: EmailMessage) -> tuple[Media, ...]:
    try:
        return tuple(
            email_parse.attachment(part.get_content_type(), part.get_filename())
            for part in message.iter_attachments()
        )
    except email_parse.MIME_ERRORS:
        return ()


ADAPTER = RawEmailAdapter()
