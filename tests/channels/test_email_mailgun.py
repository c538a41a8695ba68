"""The Mailgun route adapter: its body-borne signature, its age, and the message it forwards."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.base import (
    ChannelError,
    ChannelNotConfiguredError,
    InboundMessage,
    InvalidSignatureError,
    MalformedRequestError,
    Media,
    Parsed,
    RawRequest,
    ReplayedRequestError,
)
from channels.mailgun import ADAPTER, MAILGUN_EVENT, sign
from channels.text import storable
from models.identity import normalize_email

PAYLOADS = Path(__file__).parent.parent / "payloads" / "email" / "mailgun"
KEY = "key-7f3c9a1e5b2d4f6a8c0e1b3d5f7a9c2e"  # the key the recorded payloads were signed with
SECRETS = {"mailgun_signing_key": KEY}
SIGNED_AT = datetime.fromtimestamp(1764161950, tz=UTC)
NOW = SIGNED_AT + timedelta(seconds=50)
URL = "https://intake.example.com/webhooks/t1/email/mailgun"
FORM = "application/x-www-form-urlencoded"
MULTIPART = (PAYLOADS / "multipart_attachment.content-type").read_text().strip()


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def request(body: bytes, content_type: str = FORM) -> RawRequest:
    return RawRequest(method="POST", url=URL, headers={"content-type": content_type}, body=body)


def parse(name: str, content_type: str = FORM, now: datetime = NOW) -> Parsed:
    return ADAPTER.parse(request(payload(name), content_type), SECRETS, now)


def form_of(name: str) -> dict[str, str]:
    return dict(parse_qsl(payload(name).decode("ascii"), keep_blank_values=True))


def resigned(fields: dict[str, str], key: str = KEY) -> bytes:
    """The form with a fresh signature over its (possibly changed) timestamp and token."""
    fields = dict(fields)
    fields["signature"] = sign(key, fields["timestamp"], fields["token"])
    return urlencode(fields).encode("ascii")


def test_route_is_email_mailgun() -> None:
    """The adapter is mounted at /webhooks/{tenant}/email/mailgun."""
    assert ADAPTER.route == "email/mailgun"


def test_urlencoded_forward() -> None:
    """A forwarded message gives the From address and name, Message-Id, Date, subject and reply."""
    assert parse("urlencoded.txt") == Parsed(
        messages=(
            InboundMessage(
                channel="email",
                provider_message_id="CAJx3v+Qk2mF9pWc7Lr@mail.example.com",
                received_at=datetime(2025, 11, 26, 12, 58, 31, tzinfo=UTC),
                email="dana.whitfield@example.com",
                display_name="Dana Whitfield",
                text="Is unit 4B pet friendly?\n\nHi there,\n\nI have a small dog. Is unit 4B pet "
                "friendly?",
            ),
        ),
        nonce="5d8b2c9e1f4a7d3b6e0c8a2f5d9b1e4c7a0f3d6b9e2c5a8f1d",
    )


def test_multipart_forward_with_attachment() -> None:
    """A multipart forward keeps UTF-8 names and reports each attachment's type and file name."""
    assert parse("multipart_attachment.bin", MULTIPART) == Parsed(
        messages=(
            InboundMessage(
                channel="email",
                provider_message_id="20251126125512.88231.kwame@example.org",
                received_at=datetime(2025, 11, 26, 12, 55, 12, tzinfo=UTC),
                email="kwame.mensah@example.org",
                display_name="Kwame Mensáh",
                text="Rental application\n\nHello,\n\nMy completed application is attached.",
                media=(
                    Media(
                        kind="document",
                        mime_type="application/pdf",
                        filename="rental-application.pdf",
                    ),
                ),
            ),
        ),
        nonce="9a3e6c1f8b5d2a7e4c0f9b6d3a8e5c2f7b4d1a9e6c3f0b8d5a",
    )


@pytest.mark.parametrize(
    ("name", "reason", "token"),
    [
        ("auto_reply.txt", "auto-submitted", "2c7f4a9e1d6b3f8c5a0e7d2b9f4c1a6e3d8b5f0c7a2e9d4b1f"),
        ("bounce.txt", "delivery report", "7e1b4d9a2f6c3e8b5d0a7f2c9e4b1d6a3f8c5e0b7d2a9f4c1e"),
    ],
)
def test_auto_replies_and_bounces_are_ignored(name: str, reason: str, token: str) -> None:
    """Out-of-office replies and bounces make no contact; the token is still handed back."""
    assert parse(name) == Parsed(ignored=(reason,), nonce=token)


def test_body_mime_forward_gives_sender_name_and_message_id() -> None:
    """A forward() to a URL ending in mime posts body-mime: read for sender, name, Message-ID."""
    assert parse("body_mime.txt") == Parsed(
        messages=(
            InboundMessage(
                channel="email",
                provider_message_id="CAH7v9Qp3Lm@mail.example.com",
                received_at=datetime(2025, 11, 26, 12, 58, 55, tzinfo=UTC),
                email="sofia.ramirez@example.com",
                display_name="Sofía Ramírez",
                text=(
                    "Parking at 12 Elm Street?\n\n"
                    "Hello, does the 1-bedroom come with a parking space?"
                ),
            ),
        ),
        nonce="3b8e1d6a9f2c5e0b7d4a1f8c3e6b9d2a5f0c7e4b1d8a3f6c9e",
    )


def test_body_mime_bounce_with_a_null_envelope_sender_is_ignored() -> None:
    """A body-mime message whose Mailgun sender is empty (a null reverse path) makes nothing."""
    fields = form_of("body_mime.txt")
    fields["sender"] = ""
    parsed = ADAPTER.parse(request(resigned(fields)), SECRETS, NOW)
    assert parsed.messages == ()
    assert parsed.ignored == ("null sender",)


def test_mailgun_event_posted_here_is_acknowledged_and_ignored() -> None:
    """An event webhook (JSON signature + event-data) is verified, then ignored with a reason."""
    assert parse("event_delivered.json", "application/json") == Parsed(
        ignored=(MAILGUN_EVENT,), nonce="8c2f5a9d1e4b7c0f3a6d9e2b5c8f1a4d7e0b3c6f9a2d5e8b1c"
    )


def test_mailgun_event_with_a_wrong_signature_is_refused() -> None:
    """An event signed with another key is a 403 like any other forged request."""
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(
            request(payload("event_delivered.json"), "application/json"),
            {"mailgun_signing_key": "key-other"},
            NOW,
        )


@pytest.mark.parametrize("body", [b"{not json", b'{"event-data": {}}', b'{"signature": "x"}'])
def test_json_without_a_signature_object_is_refused(body: bytes) -> None:
    """JSON that is not a signed Mailgun event is a 400 or a 403, never accepted."""
    with pytest.raises(ChannelError):
        ADAPTER.parse(request(body, "application/json"), SECRETS, NOW)


def test_body_plain_is_used_without_stripped_text() -> None:
    """Without stripped-text, the full body-plain is the text."""
    fields = form_of("urlencoded.txt")
    del fields["stripped-text"]
    (message,) = ADAPTER.parse(request(resigned(fields)), SECRETS, NOW).messages
    assert message.text is not None
    assert message.text.endswith("> Thanks for your interest!")


def test_sender_is_used_when_from_is_missing() -> None:
    """Without a From (field or header), the envelope sender is the address."""
    fields = form_of("urlencoded.txt")
    del fields["from"], fields["From"]
    fields["message-headers"] = "[]"
    (message,) = ADAPTER.parse(request(resigned(fields)), SECRETS, NOW).messages
    assert message.email == "dana.whitfield@example.com"
    assert message.display_name is None


def test_message_id_from_message_headers_when_field_is_missing() -> None:
    """The Message-Id field missing, the id is read from message-headers."""
    fields = form_of("urlencoded.txt")
    del fields["Message-Id"]
    (message,) = ADAPTER.parse(request(resigned(fields)), SECRETS, NOW).messages
    assert message.provider_message_id == "CAJx3v+Qk2mF9pWc7Lr@mail.example.com"


def test_stored_message_attachments_json() -> None:
    """store(notify=…) posts attachments as JSON; each is media with its URL."""
    fields = form_of("urlencoded.txt")
    fields["attachments"] = (
        '[{"url": "https://storage.mailgun.net/v3/domains/mg/messages/AgEF/attachments/0",'
        ' "content-type": "image/png", "name": "floorplan.png", "size": 48213}]'
    )
    (message,) = ADAPTER.parse(request(resigned(fields)), SECRETS, NOW).messages
    assert message.media == (
        Media(
            kind="image",
            mime_type="image/png",
            filename="floorplan.png",
            url="https://storage.mailgun.net/v3/domains/mg/messages/AgEF/attachments/0",
        ),
    )


@pytest.mark.parametrize("bad", ["{not json", '{"a": 1}', '[["only-one"]]', "[[1, 2]]"])
def test_malformed_message_headers_are_400(bad: str) -> None:
    """A signed request whose message-headers is not a JSON list of pairs is malformed."""
    fields = form_of("urlencoded.txt")
    fields["message-headers"] = bad
    with pytest.raises(MalformedRequestError):
        ADAPTER.parse(request(resigned(fields)), SECRETS, NOW)


def test_no_address_at_all_is_400() -> None:
    """Neither from nor sender holds an address: nothing to record."""
    fields = form_of("urlencoded.txt")
    fields["from"] = fields["From"] = "undisclosed-recipients:;"
    fields["sender"] = "not an address"
    fields["message-headers"] = "[]"
    with pytest.raises(MalformedRequestError):
        ADAPTER.parse(request(resigned(fields)), SECRETS, NOW)


def test_broken_multipart_is_400() -> None:
    """A multipart body without its boundary cannot be read, so it is malformed."""
    with pytest.raises(MalformedRequestError):
        ADAPTER.parse(request(b"not multipart at all", MULTIPART), SECRETS, NOW)


# --- the signature and its age --------------------------------------------------------------


def test_wrong_key_is_refused() -> None:
    """A request signed with another key is a 403."""
    body = resigned(form_of("urlencoded.txt"), key=KEY + "x")
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(request(body), SECRETS, NOW)


@pytest.mark.parametrize("missing", ["timestamp", "token", "signature"])
def test_missing_signature_field_is_refused(missing: str) -> None:
    """Each of timestamp, token and signature is required."""
    fields = form_of("urlencoded.txt")
    del fields[missing]
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(request(urlencode(fields).encode()), SECRETS, NOW)


def test_token_changed_by_one_character_is_refused() -> None:
    """The signature covers timestamp and token: changing either breaks it."""
    fields = form_of("urlencoded.txt")
    fields["token"] = fields["token"][:-1] + "0"
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(request(urlencode(fields).encode()), SECRETS, NOW)


def test_body_changed_by_one_byte_in_the_signature_is_refused() -> None:
    """One changed byte of the posted signature is a 403."""
    body = payload("urlencoded.txt")
    at = body.index(b"&signature=") + len(b"&signature=")
    flipped = b"0" if body[at : at + 1] != b"0" else b"1"
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(request(body[:at] + flipped + body[at + 1 :]), SECRETS, NOW)


def test_expired_timestamp_is_a_replay() -> None:
    """A correctly signed request over 15 minutes old is refused as a replay."""
    with pytest.raises(ReplayedRequestError):
        parse("urlencoded.txt", now=SIGNED_AT + timedelta(minutes=15, seconds=1))


def test_timestamp_just_inside_the_window_is_accepted() -> None:
    """Fifteen minutes exactly is still fresh."""
    assert len(parse("urlencoded.txt", now=SIGNED_AT + timedelta(minutes=15)).messages) == 1


def test_future_timestamp_is_a_replay() -> None:
    """A timestamp far in the future is refused too."""
    with pytest.raises(ReplayedRequestError):
        parse("urlencoded.txt", now=SIGNED_AT - timedelta(hours=1))


def test_signed_non_numeric_timestamp_is_refused() -> None:
    """A timestamp that is not a number cannot be checked for age."""
    fields = form_of("urlencoded.txt")
    fields["timestamp"] = "yesterday"
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(request(resigned(fields)), SECRETS, NOW)


def test_tenant_without_key_is_not_configured() -> None:
    """A tenant that never set mailgun_signing_key cannot receive Mailgun forwards."""
    with pytest.raises(ChannelNotConfiguredError):
        ADAPTER.parse(request(payload("urlencoded.txt")), {}, NOW)


def test_signature_is_checked_before_the_message_is_read() -> None:
    """Unsigned garbage in the message fields is a 403, not a 400."""
    fields = form_of("urlencoded.txt")
    fields["message-headers"] = "{not json"
    del fields["signature"]
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(request(urlencode(fields).encode()), SECRETS, NOW)


def test_signature_does_not_cover_the_message_fields() -> None:
    """Mailgun signs only timestamp + token: the single-use token is what stops a replay."""
    fields = form_of("urlencoded.txt")
    fields["stripped-text"] = "Changed in transit"
    parsed = ADAPTER.parse(request(urlencode(fields).encode()), SECRETS, NOW)
    assert parsed.messages[0].text == "Is unit 4B pet friendly?\n\nChanged in transit"
    assert parsed.nonce == fields["token"]


# --- properties -----------------------------------------------------------------------------


def _parsed_or_channel_error(raw: RawRequest) -> None:
    try:
        result = ADAPTER.parse(raw, SECRETS, NOW)
    except ChannelError:
        return
    assert isinstance(result, Parsed)
    assert all(
        message.email and normalize_email(message.email) == message.email
        for message in result.messages
    )
    # Whatever text a payload carries, what is handed on can be stored as it is.
    assert all(message == storable(message) for message in result.messages)


content_types = st.sampled_from(
    [FORM, MULTIPART, "multipart/form-data", "text/plain", "", "application/json"]
)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=2000), content_type=content_types)
def test_any_bytes_give_parsed_or_channel_error(body: bytes, content_type: str) -> None:
    """Whatever arrives, the adapter answers with Parsed or a ChannelError, nothing else."""
    _parsed_or_channel_error(request(body, content_type))


field_names = st.sampled_from(
    [
        "from",
        "sender",
        "subject",
        "body-plain",
        "stripped-text",
        "message-headers",
        "Message-Id",
        "Date",
        "Content-Type",
        "Auto-Submitted",
        "attachments",
        "body-mime",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    changes=st.dictionaries(field_names, st.text(max_size=80), max_size=6),
    timestamp_offset=st.integers(min_value=-1200, max_value=1200),
)
def test_validly_signed_forms_with_any_fields_give_parsed_or_channel_error(
    changes: dict[str, str], timestamp_offset: int
) -> None:
    """With a valid signature, arbitrary message fields reach the parser and never crash it."""
    fields = {**form_of("urlencoded.txt"), **changes}
    fields["timestamp"] = str(int(NOW.timestamp()) + timestamp_offset)
    _parsed_or_channel_error(request(resigned(fields)))


@settings(max_examples=200, deadline=None)
@given(value=st.binary(max_size=300), name=field_names)
def test_validly_signed_multipart_with_any_field_bytes_give_parsed_or_channel_error(
    value: bytes, name: str
) -> None:
    """Raw bytes in a multipart field, signature intact, never crash the form reader."""
    boundary = MULTIPART.split("boundary=", 1)[1]
    body = payload("multipart_attachment.bin")
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
    _parsed_or_channel_error(request(part + value + b"\r\n" + body, MULTIPART))


MIME_SAMPLE = form_of("body_mime.txt")["body-mime"]


@settings(max_examples=200, deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=len(MIME_SAMPLE)),
    junk=st.text(max_size=80),
    sender=st.sampled_from(["", "<>", "sofia.ramirez@example.com", "MAILER-DAEMON"]),
)
def test_validly_signed_body_mime_of_any_shape_gives_parsed_or_channel_error(
    cut: int, junk: str, sender: str
) -> None:
    """A body-mime cut anywhere and spliced with junk is read, ignored or refused, never crashes."""
    fields = form_of("body_mime.txt")
    fields["body-mime"] = MIME_SAMPLE[:cut] + junk + MIME_SAMPLE[cut:]
    fields["sender"] = sender
    _parsed_or_channel_error(request(resigned(fields)))


@settings(max_examples=200, deadline=None)
@given(
    data=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(
                st.sampled_from(["signature", "event-data", "timestamp", "token", "event"])
                | st.text(max_size=5),
                children,
                max_size=4,
            )
        ),
        max_leaves=15,
    )
)
def test_any_json_posted_gives_parsed_or_channel_error(data: object) -> None:
    """JSON of any shape posted to the route is an ignored event, a 400 or a 403, never a crash."""
    _parsed_or_channel_error(request(json.dumps(data).encode(), "application/json"))


def test_html_only_forward_gives_the_text_of_the_html() -> None:
    """A message sent as HTML only (no body-plain) is stored with the HTML's visible text."""
    fields = dict(parse_qsl(payload("html_only.txt").decode("ascii"), keep_blank_values=True))
    fields.update(timestamp=str(int(NOW.timestamp())), token="html-only-token-1")
    (message,) = ADAPTER.parse(request(resigned(fields)), SECRETS, NOW).messages
    assert message.text == "Unit 4B\n\nIs unit 4B still free?\nRavi"
