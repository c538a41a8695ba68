"""Mailgun inbound routes: the form Mailgun POSTs when a route forwards (or stores and notifies).

Provider docs: https://documentation.mailgun.com/docs/mailgun/user-manual/receive-forward-store/receive-http
(the fields) and https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks
(the signature).

Mailgun's signature lives in the body, so the form is read first, then `timestamp`, `token` and
`signature` are checked before anything else in it is looked at. The signature covers only
`timestamp + token`, not the message: it proves Mailgun minted the request recently, and the
token is single-use. So a timestamp over 15 minutes from `now` is refused here, and the token is
returned as the nonce the caller burns once the message is stored (a replay is refused there).

The message's subject is kept as the first line of its text; Mailgun's `stripped-text` (the
reply without quoted history and signature) is preferred to `body-plain`.

A route whose `forward()` URL ends in `mime` posts the whole message as `body-mime` (and no
parsed fields): it is read as the raw adapter reads a message, with Mailgun's `sender` as the
envelope sender.
https://documentation.mailgun.com/docs/mailgun/user-manual/receive-forward-store/storing-and-retrieving-messages

A Mailgun event webhook (delivered, failed, opened, …: JSON with `signature` and
`event-data`, https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/webhook-payloads)
pointed at this route by mistake is verified like a route post and acknowledged as ignored:
Mailgun retries a 4xx for hours, and an event is never a person writing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qsl

from channels import email_parse, email_raw
from channels.base import (
    InvalidSignatureError,
    MalformedRequestError,
    Media,
    Parsed,
    RawRequest,
    ReplayedRequestError,
    require_secret,
)

SECRET_NAME = "mailgun_signing_key"  # noqa: S105  # the setting's name, not a secret
MAILGUN_EVENT = "mailgun event"
MAX_AGE = timedelta(minutes=15)
# Headers Mailgun also posts as fields of their own; they stand in when message-headers is absent.
_HEADER_FIELDS = (
    "Message-Id",
    "Date",
    "Subject",
    "Content-Type",
    "Auto-Submitted",
    "Precedence",
    "X-Autoreply",
    "X-Autorespond",
    "X-Auto-Response-Suppress",
    "X-Failed-Recipients",
    "Return-Path",
)


@dataclass
class Form:
    """The posted fields (first value of each name, names compared case-insensitively) and files."""

    fields: dict[str, str] = field(default_factory=dict)
    files: list[Media] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        return self.fields.get(name.lower())

    def add(self, name: str, value: str) -> None:
        self.fields.setdefault(name.lower(), value)


class MailgunAdapter:
    route = "email/mailgun"

    def parse(self, request: RawRequest, secrets: Mapping[str, str], now: datetime) -> Parsed:
        """Read the form, verify its signature and age, then the message it describes."""
        key = require_secret(secrets, SECRET_NAME)
        if _is_json(request):
            return _parse_event(request.body, key, now)
        form = read_form(request)
        token = verify_signature(form, key, now)
        return _parse_message(form, now, nonce=token)


def _is_json(request: RawRequest) -> bool:
    content_type = (request.header("content-type") or "").split(";", 1)[0].strip().lower()
    return content_type == "application/json" or request.body.lstrip()[:1] == b"{"


def _parse_event(body: bytes, key: str, now: datetime) -> Parsed:
    """An event webhook: `{"signature": {timestamp, token, signature}, "event-data": {…}}`."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedRequestError("body is not JSON") from exc
    signature = data.get("signature") if isinstance(data, dict) else None
    if not isinstance(signature, dict):
        raise InvalidSignatureError("a JSON body without a Mailgun signature object")
    form = Form()
    for name in ("timestamp", "token", "signature"):
        value = signature.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            form.add(name, value)
    token = verify_signature(form, key, now)
    return Parsed(ignored=(MAILGUN_EVENT,), nonce=token)


def sign(key: str, timestamp: str, token: str) -> str:
    """Mailgun's signature: hex HMAC-SHA256 of timestamp + token with the signing key."""
    message = (timestamp + token).encode("utf-8", "surrogatepass")
    return hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify_signature(form: Form, key: str, now: datetime) -> str:
    """Check the signature, then the timestamp's age; the token, for the caller to burn."""
    timestamp, token, signature = form.get("timestamp"), form.get("token"), form.get("signature")
    if not timestamp or not token or not signature:
        raise InvalidSignatureError("missing timestamp, token or signature")
    expected = sign(key, timestamp, token).encode("ascii")
    given = signature.strip().lower().encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(given, expected):
        raise InvalidSignatureError("wrong Mailgun signature")
    try:
        signed_at = int(timestamp)
    except ValueError as exc:
        raise InvalidSignatureError("timestamp is not a number") from exc
    age = now.timestamp() - signed_at
    # Both ways: a timestamp far in the future is as unusable as an old one.
    if abs(age) > MAX_AGE.total_seconds():
        raise ReplayedRequestError("Mailgun timestamp is more than 15 minutes from now")
    return token


def read_form(request: RawRequest) -> Form:
    """The form Mailgun posted: multipart when the message has attachments, urlencoded if not."""
    content_type = request.header("content-type") or ""
    if content_type.split(";", 1)[0].strip().lower() == "multipart/form-data":
        return _read_multipart(content_type, request.body)
    return _read_urlencoded(request.body)


def _read_urlencoded(body: bytes) -> Form:
    try:
        text = body.decode("ascii")
        pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="replace")
    except ValueError as exc:  # UnicodeDecodeError: urlencoded bodies are ASCII
        raise MalformedRequestError("body is not a urlencoded form") from exc
    form = Form()
    for name, value in pairs:
        form.add(name, value)
    return form


def _read_multipart(content_type: str, body: bytes) -> Form:
    # The email package reads multipart/form-data as it reads MIME, given the request's
    # Content-Type (with its boundary) as the first header.
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n"
    try:
        message = BytesParser(policy=policy.default).parsebytes(
            head.encode("latin-1", "replace") + body
        )
        if not isinstance(message, EmailMessage) or not message.is_multipart():
            raise MalformedRequestError("body is not multipart/form-data")
        form = Form()
        for part in message.iter_parts():
            _add_part(form, part)
    except email_parse.MIME_ERRORS as exc:
        raise MalformedRequestError("body is not multipart/form-data") from exc
    return form


def _add_part(form: Form, part: Any) -> None:
    name = part.get_param("name", header="content-disposition")
    if not isinstance(name, str) or part.is_multipart():
        return
    filename = part.get_filename()
    if filename is not None:
        form.files.append(email_parse.attachment(part.get_content_type(), filename))
        return
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        charset = part.get_content_charset() or "utf-8"
        try:
            form.add(name, payload.decode(charset, "replace"))
        except LookupError:  # an unknown charset name: Mailgun sends UTF-8 anyway
            form.add(name, payload.decode("utf-8", "replace"))


def _headers(form: Form) -> list[tuple[str, str]]:
    """message-headers, a JSON list of [name, value] pairs, plus the header-like fields."""
    headers: list[tuple[str, str]] = []
    raw = form.get("message-headers")
    if raw:
        try:
            pairs = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise MalformedRequestError("message-headers is not JSON") from exc
        if not isinstance(pairs, list):
            raise MalformedRequestError("message-headers is not a list")
        for pair in pairs:
            if not (
                isinstance(pair, list)
                and len(pair) == 2
                and all(isinstance(item, str) for item in pair)
            ):
                raise MalformedRequestError("message-headers holds something other than pairs")
            headers.append((pair[0], pair[1]))
    present = {name.lower() for name, _ in headers}
    for name in _HEADER_FIELDS:
        value = form.get(name)
        if value is not None and name.lower() not in present:
            headers.append((name, value))
    return headers


def _stored_attachments(form: Form) -> list[Media]:
    """store(notify=…) posts attachments as JSON: url, content-type, name, size."""
    raw = form.get("attachments")
    if not raw:
        return []
    try:
        items = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise MalformedRequestError("attachments is not JSON") from exc
    if not isinstance(items, list):
        raise MalformedRequestError("attachments is not a list")
    found = []
    for item in items:
        if not isinstance(item, dict):
            raise MalformedRequestError("attachments holds something other than objects")
        found.append(
            email_parse.attachment(
                _str_or_none(item.get("content-type")),
                _str_or_none(item.get("name")),
                _str_or_none(item.get("url")),
            )
        )
    return found


def _ingestible_mailbox(value: str | None) -> email_parse.Mailbox | None:
    mailbox = email_parse.parse_mailbox(value)
    if mailbox is None or email_parse.ingestible_address(mailbox.address) is None:
        return None
    return mailbox


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _parse_message(form: Form, now: datetime, *, nonce: str) -> Parsed:
    mime = form.get("body-mime")
    if mime is not None:
        parsed = email_raw.parse_message(
            mime.encode("utf-8", "surrogatepass"), now, envelope_sender=form.get("sender")
        )
        return replace(parsed, nonce=nonce)
    headers = _headers(form)
    from_field = form.get("from") or email_parse.first_header(headers, "from")
    envelope_sender = form.get("sender")
    reason = email_parse.automated_reason(
        headers,
        senders=(from_field, envelope_sender),
        content_type=email_parse.first_header(headers, "content-type"),
    )
    if reason:
        return Parsed(ignored=(reason,), nonce=nonce)
    mailbox = _ingestible_mailbox(from_field) or _ingestible_mailbox(envelope_sender)
    if mailbox is None:
        raise MalformedRequestError("neither from nor sender is an address contacts accept")
    subject = email_parse.decoded_header(
        "subject", form.get("subject") or email_parse.first_header(headers, "subject")
    )
    body = form.get("stripped-text")
    if not body or not body.strip():
        body = form.get("body-plain")
    if not body or not body.strip():
        # A message sent as HTML only: Mailgun then posts no text, just `body-html`.
        html = form.get("stripped-html") or form.get("body-html")
        body = email_parse.text_of_html(html) if html else body
    inbound = email_parse.inbound_email(
        mailbox=mailbox,
        subject=subject,
        body=body,
        message_id=form.get("Message-Id") or email_parse.first_header(headers, "message-id"),
        date=email_parse.first_header(headers, "date"),
        media=(*form.files, *_stored_attachments(form)),
        now=now,
    )
    return Parsed(messages=(inbound,), nonce=nonce)


ADAPTER = MailgunAdapter()
