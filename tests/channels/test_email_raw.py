"""The raw RFC 5322 email adapter: our HMAC header, then senders, ids, text and attachments."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

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
)
from channels.email_raw import ADAPTER, sign
from channels.text import storable
from models.identity import normalize_email

PAYLOADS = Path(__file__).parent.parent / "payloads" / "email" / "raw"
SECRET = "whsec-raw-email-test-4f1c9e"
SECRETS = {"email_webhook_secret": SECRET}
NOW = datetime(2025, 11, 26, 13, 0, tzinfo=UTC)
URL = "https://intake.example.com/webhooks/t1/email/raw"


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def request(body: bytes, signature: str | None = None) -> RawRequest:
    headers = {"content-type": "message/rfc822"}
    headers["x-intake-signature"] = sign(body, SECRET) if signature is None else signature
    return RawRequest(method="POST", url=URL, headers=headers, body=body)


def parse(name: str) -> Parsed:
    return ADAPTER.parse(request(payload(name)), SECRETS, NOW)


def test_route_is_email_raw() -> None:
    """The adapter is mounted at /webhooks/{tenant}/email/raw."""
    assert ADAPTER.route == "email/raw"


def test_plain_message() -> None:
    """A plain message gives the lowercased sender, its name, Message-ID, Date and the text."""
    assert parse("plain.eml") == Parsed(
        messages=(
            InboundMessage(
                channel="email",
                provider_message_id="CAF=8jK3xQ7v2pLm@mail.example.net",
                received_at=datetime(2025, 11, 26, 12, 41, 3, tzinfo=UTC),
                email="maria.garcia@example.net",
                display_name="Maria Garcia",
                text=(
                    "Viewing the 2BR at 12 Elm Street\n\nHi,\n\nCould I see the two-bedroom on "
                    "Saturday morning? I can move in by January 1.\n\nThanks,\nMaria"
                ),
            ),
        )
    )


def test_multipart_with_attachments() -> None:
    """The text/plain alternative is the text; each attachment is media with type and name."""
    assert parse("multipart_attachment.eml") == Parsed(
        messages=(
            InboundMessage(
                channel="email",
                provider_message_id="a1b2c3d4-e5f6-4789-abcd-ef0123456789@example.org",
                received_at=datetime(2025, 11, 26, 12, 30, tzinfo=UTC),
                email="sam.lee@example.org",
                display_name="Lee, Sam",
                text="Application documents\n\nPlease find my pay stub and ID attached.",
                media=(
                    Media(kind="document", mime_type="application/pdf", filename="paystub-oct.pdf"),
                    Media(kind="image", mime_type="image/jpeg", filename="id-front.jpg"),
                ),
            ),
        )
    )


def test_encoded_display_name_subject_and_latin1_body_are_decoded() -> None:
    """RFC 2047 words in From and Subject, and a quoted-printable ISO-8859-1 body, are decoded."""
    assert parse("encoded_name.eml") == Parsed(
        messages=(
            InboundMessage(
                channel="email",
                provider_message_id="20251126122000.GA1234@example.fr",
                received_at=datetime(2025, 11, 26, 12, 20, tzinfo=UTC),
                email="jp.dubois@example.fr",
                display_name="Jean-François Dübois",
                text=(
                    "Demande d'information – appartement\n\n"
                    "Bonjour, l'appartement est-il toujours disponible ? Merci, François"
                ),
            ),
        )
    )


def test_html_only_message_without_message_id() -> None:
    """HTML becomes text, and a missing Message-ID gets a stable hash-based id."""
    (message,) = parse("html_no_message_id.eml").messages
    assert message.text == "Parking?\n\nDoes the unit come with parking?\nThanks & regards,\nPriya"
    assert message.provider_message_id.startswith("sha256:")
    assert len(message.provider_message_id) == len("sha256:") + 64
    assert parse("html_no_message_id.eml").messages[0].provider_message_id == (
        message.provider_message_id
    )


def test_fallback_id_ignores_transport_headers() -> None:
    """A relay adding a Received header on redelivery does not change the fallback id."""
    body = payload("html_no_message_id.eml")
    relayed = b"Received: from relay2.example.com by mx; Wed, 26 Nov 2025 12:11:00 +0000\r\n" + body
    first = ADAPTER.parse(request(body), SECRETS, NOW).messages[0]
    second = ADAPTER.parse(request(relayed), SECRETS, NOW).messages[0]
    assert first.provider_message_id == second.provider_message_id


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("auto_reply.eml", "auto-submitted"),
        ("dsn_bounce.eml", "delivery report"),
        ("null_from.eml", "null sender"),
        ("feedback_report.eml", "feedback report"),
        ("exchange_oof.eml", "auto-reply"),
        ("exim_bounce.eml", "delivery report"),
        ("yahoo_vacation.eml", "auto-reply"),
    ],
)
def test_auto_replies_and_bounces_are_ignored(name: str, reason: str) -> None:
    """Auto-replies, bounces, null senders and abuse reports make no contact, and no 400."""
    assert parse(name) == Parsed(ignored=(reason,))


def test_utf8_headers_give_the_address_and_name() -> None:
    """RFC 6532 raw UTF-8 in From and Subject: the right address (lowercased) and name."""
    assert parse("utf8_headers.eml") == Parsed(
        messages=(
            InboundMessage(
                channel="email",
                provider_message_id="20251126124402.4711@bücher.example",
                received_at=datetime(2025, 11, 26, 12, 44, 2, tzinfo=UTC),
                email="jörg.müller@bücher.example",
                display_name="Jörg Müller",
                text=(
                    "Besichtigung der Wohnung – 12 Elm Street\n\nGuten Tag,\n\nich interessiere "
                    "mich für die Zweizimmerwohnung. Wäre Samstag möglich?\n\nGrüße\nJörg"
                ),
            ),
        )
    )


def test_stray_byte_in_the_name_degrades_only_the_name() -> None:
    """A byte that is not UTF-8 in the display name becomes U+FFFD; the address is intact."""
    (message,) = parse("stray_byte_name.eml").messages
    assert (message.email, message.display_name) == (
        "joerg.mueller@example.de",
        "J\ufffdrg Müller",
    )


def test_stray_byte_in_the_address_is_refused_before_the_2xx() -> None:
    """An address with a byte that is not UTF-8 cannot be known, so it is a 400, not ingested."""
    with pytest.raises(MalformedRequestError):
        parse("stray_byte_address.eml")


@pytest.mark.parametrize("address", ["maria@localhost", "maria@example.test", '"m a"@[10.0.0.1]'])
def test_address_the_worker_would_refuse_is_a_400(address: str) -> None:
    """A From address that normalize_email refuses is refused here, before anything is stored."""
    body = payload("plain.eml").replace(b"Maria.Garcia@Example.NET", address.encode())
    with pytest.raises(MalformedRequestError):
        ADAPTER.parse(request(body), SECRETS, NOW)


def test_message_without_date_is_received_now() -> None:
    """No Date header: received_at is the time the webhook was called."""
    body = payload("plain.eml").replace(b"Date: Wed, 26 Nov 2025 07:41:03 -0500\r\n", b"")
    (message,) = ADAPTER.parse(request(body), SECRETS, NOW).messages
    assert message.received_at == NOW


def test_message_without_from_is_malformed() -> None:
    """RFC 5322 requires From; without an address there is nobody to record."""
    body = payload("plain.eml").replace(b"From: Maria Garcia <Maria.Garcia@Example.NET>\r\n", b"")
    with pytest.raises(MalformedRequestError):
        ADAPTER.parse(request(body), SECRETS, NOW)


# --- the signature --------------------------------------------------------------------------


def test_wrong_secret_is_refused() -> None:
    """A body signed with another secret is a 403."""
    body = payload("plain.eml")
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(request(body, signature=sign(body, SECRET + "x")), SECRETS, NOW)


def test_missing_signature_header_is_refused() -> None:
    """No X-Intake-Signature is a 403."""
    raw = RawRequest(method="POST", url=URL, headers={}, body=payload("plain.eml"))
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(raw, SECRETS, NOW)


def test_body_changed_by_one_byte_is_refused() -> None:
    """The signature covers every byte of the body."""
    body = payload("plain.eml")
    tampered = body.replace(b"Saturday", b"Saturdax")
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(request(tampered, signature=sign(body, SECRET)), SECRETS, NOW)


@pytest.mark.parametrize("prefix", ["", "sha1=", "sha256 "])
def test_signature_without_sha256_scheme_is_refused(prefix: str) -> None:
    """Only `sha256=<hex>` is accepted."""
    body = payload("plain.eml")
    digest = sign(body, SECRET).removeprefix("sha256=")
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(request(body, signature=prefix + digest), SECRETS, NOW)


def test_uppercase_hex_signature_is_accepted() -> None:
    """Hex is case-insensitive, as relays differ in how they print it."""
    body = payload("plain.eml")
    signature = "sha256=" + sign(body, SECRET).removeprefix("sha256=").upper()
    assert len(ADAPTER.parse(request(body, signature=signature), SECRETS, NOW).messages) == 1


def test_tenant_without_secret_is_not_configured() -> None:
    """A tenant that never set email_webhook_secret cannot receive raw email."""
    with pytest.raises(ChannelNotConfiguredError):
        ADAPTER.parse(request(payload("plain.eml")), {}, NOW)


# --- properties -----------------------------------------------------------------------------


def _parsed_or_channel_error(raw: RawRequest) -> None:
    try:
        result = ADAPTER.parse(raw, SECRETS, NOW)
    except ChannelError:
        return
    assert isinstance(result, Parsed)
    # Whatever text a payload carries, what is handed on can be stored as it is.
    assert all(message == storable(message) for message in result.messages)
    # And its address is one the worker takes as it is.
    assert all(
        message.email and normalize_email(message.email) == message.email
        for message in result.messages
    )


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=2000),
    headers=st.dictionaries(st.text(min_size=1, max_size=30), st.text(max_size=80), max_size=5),
)
def test_any_bytes_and_headers_give_parsed_or_channel_error(
    body: bytes, headers: dict[str, str]
) -> None:
    """Whatever arrives, the adapter answers with Parsed or a ChannelError, nothing else."""
    lowered = {name.lower(): value for name, value in headers.items()}
    _parsed_or_channel_error(RawRequest(method="POST", url=URL, headers=lowered, body=body))


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=3000))
def test_any_signed_bytes_give_parsed_or_channel_error(body: bytes) -> None:
    """Correctly signed random bytes reach the MIME parser, which never crashes the adapter."""
    _parsed_or_channel_error(request(body))


header_names = st.sampled_from(
    [
        "From",
        "Subject",
        "Date",
        "Message-ID",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Auto-Submitted",
        "Precedence",
        "Return-Path",
        "X-Auto-Response-Suppress",
        "X-Failed-Recipients",
        "Content-Disposition",
        "MIME-Version",
    ]
)
header_text = st.text(
    alphabet=st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=60
) | st.sampled_from(
    [
        "=?UTF-8?Q?Jos=C3=A9?= <a@b.c>",
        "=?x-unknown?B?////?=",
        "multipart/mixed; boundary=x",
        "text/plain; charset=bogus",
        "base64",
        "quoted-printable",
        '"unterminated <a@b',
        "<>",
        "Mon, 99 Foo 2025 99:99:99 +9999",
        "text/html",
        "multipart/report",
        "multipart/report; report-type=feedback-report; boundary=x",
        "Jörg <jörg@bücher.de>",
        "All",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(st.tuples(header_names, header_text), max_size=8),
    body=st.binary(max_size=500),
    sender=st.sampled_from(
        [
            b"From: a@example.com\r\n",
            b"",
            "From: Jörg <jörg@bücher.de>\r\n".encode(),
            b"From: <>\r\n",
        ]
    ),
)
def test_signed_messages_with_hostile_headers_give_parsed_or_channel_error(
    headers: list[tuple[str, str]], body: bytes, sender: bytes
) -> None:
    """Messages with odd charsets, encodings, dates and MIME structure never crash the adapter."""
    head = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
    _parsed_or_channel_error(request(sender + head + b"\r\n" + body))


def test_undecodable_display_name_is_made_storable() -> None:
    """Bytes that are not UTF-8 in an encoded word become U+FFFD, not lone surrogates."""
    body = b"From: =?utf-8?q?Jo=E2=28=A1o?= <joao@example.com>\r\nSubject: oi\r\n\r\nola\x00!"
    (message,) = ADAPTER.parse(request(body), SECRETS, NOW).messages
    assert message.display_name == "Jo\ufffd(\ufffdo"
    assert message.text == "oi\n\nola!"
    assert message.display_name.encode("utf-8")


@pytest.mark.parametrize(
    ("name", "body"),
    [
        (
            "unknown_8bit.eml",
            "Olá, o apartamento ainda está disponível? Posso visitá-lo no sábado.",
        ),
        (
            "latin1_8bit_unlabelled.eml",
            "Bonjour, je voudrais visiter l'appartement. Très intéressé, merci — François",
        ),
    ],
)
def test_eight_bit_body_without_a_usable_charset_is_read_not_lost(name: str, body: str) -> None:
    """`charset=unknown-8bit` and an unlabelled Latin-1 8BITMIME body keep their words."""
    (message,) = parse(name).messages
    assert message.text is not None
    assert message.text.split("\n\n", 1)[1] == body
