"""The Twilio Messaging adapter on documented payloads, signed with Twilio's own library."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twilio.request_validator import HMAC_SHA256, RequestValidator

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
from channels.twilio import (
    ADAPTER,
    NOT_A_PHONE,
    NOT_A_WHATSAPP_USER,
    STATUS_CALLBACK,
    read_form,
)

PAYLOADS = Path(__file__).parent.parent / "payloads" / "twilio"
URL = "https://intake.example.com/webhooks/4b1d6a9e-3c1f-4e0a-9d51-2f7c8e6b1a30/twilio"
TOKEN = "12345678901234567890123456789012"
SECRETS = {"twilio_auth_token": TOKEN}
NOW = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
AC = "AC3f1c2b7e9d8a4c6b5e0f1a2b3c4d5e6f"


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def sign(url: str, body: bytes, token: str = TOKEN) -> str:
    """X-Twilio-Signature as Twilio computes it: the URL, then every field sorted by name."""
    return str(RequestValidator(token).compute_signature(url, read_form(body)))


def request(body: bytes, *, url: str = URL, signature: str | None = None) -> RawRequest:
    headers = {"content-type": "application/x-www-form-urlencoded"}
    headers["x-twilio-signature"] = sign(url, body) if signature is None else signature
    return RawRequest(method="POST", url=url, headers=headers, body=body)


def parse(body: bytes, **kwargs: str) -> Parsed:
    return ADAPTER.parse(request(body, **kwargs), SECRETS, NOW)


def edited(body: bytes, **changes: str | None) -> bytes:
    """The body with fields replaced (or removed, for None), order kept."""
    pairs = parse_qsl(body.decode(), keep_blank_values=True)
    out = [(k, changes.get(k, v)) for k, v in pairs]
    out = [(k, v) for k, v in out if v is not None]
    return urlencode(out).encode()


# --- messages -------------------------------------------------------------------------------


def test_sms_text_becomes_one_sms_message() -> None:
    """An inbound SMS is an sms message from the sender's E.164 number, keyed by MessageSid."""
    parsed = parse(payload("sms_text.form"))
    assert parsed == Parsed(
        messages=(
            InboundMessage(
                channel="sms",
                provider_message_id="SM8f3b2a1c9d7e4f60a1b2c3d4e5f60718",
                received_at=NOW,
                phone="+14155552671",
                text="Hi, is the 2-bed on Elm St still available?",
            ),
        )
    )


def test_mms_media_are_listed_in_order() -> None:
    """Each MediaUrl{N} with its MediaContentType{N} becomes a Media; an empty Body is no text."""
    base = f"https://api.twilio.com/2010-04-01/Accounts/{AC}/Messages/MM0a1b2c3d4e5f60718293a4b5c6d7e8f9/Media"
    assert parse(payload("mms_media.form")).messages == (
        InboundMessage(
            channel="sms",
            provider_message_id="MM0a1b2c3d4e5f60718293a4b5c6d7e8f9",
            received_at=NOW,
            phone="+12125550199",
            text=None,
            media=(
                Media(
                    kind="image",
                    mime_type="image/jpeg",
                    url=f"{base}/ME11aa22bb33cc44dd55ee66ff77889900",
                ),
                Media(
                    kind="document",
                    mime_type="application/pdf",
                    url=f"{base}/ME99887766ff55ee44dd33cc22bb11aa00",
                ),
            ),
        ),
    )


def test_whatsapp_through_twilio_is_a_whatsapp_message() -> None:
    """`From=whatsapp:+…` is channel whatsapp, with WaId as sender id and ProfileName as name."""
    assert parse(payload("whatsapp_text.form")).messages == (
        InboundMessage(
            channel="whatsapp",
            provider_message_id="SM5c4b3a29180f7e6d5c4b3a2918f7e6d5",
            received_at=NOW,
            sender_id="5511987654321",
            phone="+5511987654321",
            display_name="João Silva",
            text="Olá! Quero agendar uma visita ao apartamento.",
        ),
    )


def test_whatsapp_without_waid_uses_the_digits_of_the_number() -> None:
    """Without WaId the WhatsApp sender id is the number's digits, so identity stays stable."""
    body = edited(payload("whatsapp_text.form"), WaId=None, ProfileName="")
    (message,) = parse(body).messages
    assert (message.sender_id, message.phone, message.display_name) == (
        "5511987654321",
        "+5511987654321",
        None,
    )


def test_whatsapp_location_is_a_location_media() -> None:
    """A shared location becomes Media kind location with a geo: URI and its label and address."""
    (message,) = parse(payload("whatsapp_location.form")).messages
    assert message.text is None
    assert message.media == (
        Media(
            kind="location",
            url="geo:-23.561414,-46.655881",
            caption="MASP, Av. Paulista, 1578 - Bela Vista, São Paulo",
        ),
    )


def test_messaging_service_number_is_still_a_message() -> None:
    """A message to a Messaging Service number (MessagingServiceSid present) is from a person."""
    assert parse(payload("messaging_service.form")).messages == (
        InboundMessage(
            channel="sms",
            provider_message_id="SMa1b2c3d4e5f60718293a4b5c6d7e8f90",
            received_at=NOW,
            phone="+15125550187",
            text="Do you allow pets?",
        ),
    )


def test_redelivery_gives_the_same_message() -> None:
    """Twilio retrying the same request yields an identical message, so it is stored once."""
    body = payload("whatsapp_text.form")
    assert parse(body) == parse(body)
    assert parse(body).messages[0].provider_message_id == "SM5c4b3a29180f7e6d5c4b3a2918f7e6d5"


def test_sms_message_sid_alone_identifies_the_message() -> None:
    """An older-style post with only SmsMessageSid is keyed by it."""
    body = edited(payload("sms_text.form"), MessageSid=None, SmsSid=None)
    assert parse(body).messages[0].provider_message_id == "SM8f3b2a1c9d7e4f60a1b2c3d4e5f60718"


# --- not from a person ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["status_delivered.form", "status_failed.form", "whatsapp_status_read.form"]
)
def test_status_callbacks_are_not_messages(name: str) -> None:
    """Delivery/read/failure callbacks about the tenant's own messages make no contact."""
    assert parse(payload(name)) == Parsed(ignored=(STATUS_CALLBACK,))


def test_status_other_than_received_wins_over_a_body() -> None:
    """A callback that also echoes a Body is still a callback: its From is the tenant's number."""
    body = payload("status_delivered.form") + b"&Body=Your+tour+is+at+3pm&NumMedia=0"
    assert parse(body) == Parsed(ignored=(STATUS_CALLBACK,))


def test_short_code_sender_is_not_a_person() -> None:
    """A short code (carrier or service notice) is not a phone number, so no contact."""
    assert parse(payload("short_code.form")) == Parsed(ignored=(NOT_A_PHONE,))


# --- 2026 senders: RCS, business-scoped user ids, Mexico -----------------------------------

BSUID = "US.13491208655302741918"


def test_rcs_is_the_sms_channel_over_rcs() -> None:
    """From=rcs:+E164 is an sms message from that phone, recorded as having come over RCS."""
    assert parse(payload("rcs_text.form")) == Parsed(
        messages=(
            InboundMessage(
                channel="sms",
                provider_message_id="SM1e2d3c4b5a69788796a5b4c3d2e1f0a9",
                received_at=NOW,
                phone="+14155552671",
                text="Can I book a viewing for Saturday?",
                transport="rcs",
            ),
        )
    )


def test_rcs_and_sms_from_one_number_share_its_identity() -> None:
    """The RCS message and the SMS from the same number carry the same phone identity."""
    (rcs,) = parse(payload("rcs_text.form")).messages
    (sms,) = parse(payload("sms_text.form")).messages
    assert rcs.identities() == sms.identities()


def test_whatsapp_bsuid_sender_is_identified_by_it() -> None:
    """From=whatsapp:<BSUID> with no WaId: a whatsapp message whose only identity is the BSUID."""
    assert parse(payload("whatsapp_bsuid.form")) == Parsed(
        messages=(
            InboundMessage(
                channel="whatsapp",
                provider_message_id="SM7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d",
                received_at=NOW,
                bsuid=BSUID,
                display_name="Sheena Nelson",
                text="Hi! Is the studio still free?",
            ),
        )
    )


def test_whatsapp_bsuid_with_phone_carries_both() -> None:
    """From=whatsapp:+E164 with ExternalUserId: wa_id, BSUID and phone are one sender's."""
    (message,) = parse(payload("whatsapp_bsuid_with_phone.form")).messages
    assert (message.sender_id, message.bsuid, message.phone) == (
        "16505551234",
        BSUID,
        "+16505551234",
    )


def test_whatsapp_bsuid_from_with_waid_gains_the_phone() -> None:
    """From=whatsapp:<BSUID> with a WaId: the phone Twilio shares joins the BSUID."""
    body = edited(payload("whatsapp_bsuid.form"), ExternalUserId=None)
    body += b"&WaId=16505551234"
    (message,) = parse(body).messages
    assert (message.sender_id, message.bsuid, message.phone) == (
        "16505551234",
        BSUID,
        "+16505551234",
    )


def test_external_user_id_of_another_shape_is_left_out() -> None:
    """An ExternalUserId that is not a BSUID is not vouched for: the phone alone identifies."""
    body = edited(payload("whatsapp_bsuid_with_phone.form"), ExternalUserId="whoever")
    (message,) = parse(body).messages
    assert (message.bsuid, message.phone) == (None, "+16505551234")


def test_whatsapp_sender_that_is_neither_phone_nor_bsuid_is_skipped() -> None:
    """From=whatsapp:<something else> has no identity to give: skipped with a reason."""
    body = edited(payload("whatsapp_bsuid.form"), From="whatsapp:someone", ExternalUserId=None)
    assert parse(body) == Parsed(ignored=(NOT_A_WHATSAPP_USER,))


def test_mexican_whatsapp_number_with_the_old_mobile_1_is_a_phone() -> None:
    """whatsapp:+521…, which phonenumbers calls impossible, is still that sender's phone."""
    (message,) = parse(payload("whatsapp_mexico.form")).messages
    assert (message.channel, message.sender_id, message.phone) == (
        "whatsapp",
        "5215512345678",
        "+5215512345678",
    )


# --- signatures -----------------------------------------------------------------------------


def test_missing_secret_is_not_configured() -> None:
    """A tenant without twilio_auth_token cannot verify anything."""
    with pytest.raises(ChannelNotConfiguredError):
        ADAPTER.parse(request(payload("sms_text.form")), {}, NOW)


def test_wrong_token_is_refused() -> None:
    """A signature made with another account's token is refused."""
    body = payload("sms_text.form")
    with pytest.raises(InvalidSignatureError):
        parse(body, signature=sign(URL, body, token="0" * 32))


@pytest.mark.parametrize("signature", ["", "   "])
def test_missing_signature_is_refused(signature: str) -> None:
    """No X-Twilio-Signature (or an empty one) is a 403."""
    body = payload("sms_text.form")
    with pytest.raises(InvalidSignatureError):
        parse(body, signature=signature)


def test_absent_signature_header_is_refused() -> None:
    """A request without the header at all is a 403, before the body is read."""
    raw = RawRequest(method="POST", url=URL, headers={}, body=payload("sms_text.form"))
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(raw, SECRETS, NOW)


def test_body_changed_by_one_byte_is_refused() -> None:
    """Changing one character of a signed field breaks the signature."""
    body = payload("sms_text.form")
    signature = sign(URL, body)
    tampered = body.replace(b"2-bed", b"3-bed")
    assert tampered != body
    with pytest.raises(InvalidSignatureError):
        parse(tampered, signature=signature)


@pytest.mark.parametrize(
    "other_url",
    [
        URL.replace("https://", "http://"),
        URL.replace("intake.example.com", "evil.example.com"),
        URL + "?extra=1",
    ],
)
def test_signature_is_bound_to_the_public_url(other_url: str) -> None:
    """The same signed body sent to another scheme, host or query is refused."""
    body = payload("sms_text.form")
    with pytest.raises(InvalidSignatureError):
        parse(body, url=other_url, signature=sign(URL, body))


def test_dropping_a_blank_parameter_breaks_the_signature() -> None:
    """Blank fields are signed too: a body missing `FromZip=` no longer matches."""
    body = payload("sms_text.form")
    signature = sign(URL, body)
    dropped = body.replace(b"FromZip=&", b"")
    assert dropped != body
    with pytest.raises(InvalidSignatureError):
        parse(dropped, signature=signature)


def test_url_with_default_port_is_accepted() -> None:
    """Twilio sometimes signs the URL with :443; the library checks both spellings."""
    body = payload("sms_text.form")
    signature = sign(URL.replace(".com/", ".com:443/"), body)
    assert parse(body, signature=signature).messages


def test_query_string_is_part_of_the_signed_url() -> None:
    """A webhook URL configured with a query string verifies when signed with it."""
    url = URL + "?source=console"
    body = payload("sms_text.form")
    assert parse(body, url=url, signature=sign(url, body)).messages


def test_shared_key_sha256_signature_is_accepted() -> None:
    """With X-Twilio-Webhooks-Signature-Settings naming HMAC_SHA256, that algorithm is used."""
    body = payload("sms_text.form")
    signature = RequestValidator(TOKEN).compute_signature(URL, read_form(body), HMAC_SHA256)
    raw = RawRequest(
        method="POST",
        url=URL,
        headers={
            "x-twilio-signature": signature,
            "x-twilio-webhooks-signature-settings": "key=whsk_123,algorithm=HMAC_SHA256",
        },
        body=body,
    )
    assert ADAPTER.parse(raw, SECRETS, NOW).messages


def test_unsupported_signature_algorithm_is_refused() -> None:
    """An algorithm the library does not know fails verification rather than being skipped."""
    body = payload("sms_text.form")
    raw = RawRequest(
        method="POST",
        url=URL,
        headers={
            "x-twilio-signature": sign(URL, body),
            "x-twilio-webhooks-signature-settings": "algorithm=HMAC_MD5",
        },
        body=body,
    )
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(raw, SECRETS, NOW)


def test_repeated_field_values_are_all_signed() -> None:
    """A repeated name is signed with all its values; appending another value is refused."""
    body = payload("sms_text.form") + b"&Tag=a&Tag=b"
    assert parse(body).messages
    signature = sign(URL, body)
    with pytest.raises(InvalidSignatureError):
        parse(body + b"&Tag=c", signature=signature)
    with pytest.raises(InvalidSignatureError):
        parse(body + b"&Body=changed", signature=signature)


# --- malformed after verification -----------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"MessageSid": None, "SmsMessageSid": None, "SmsSid": None},
        {"From": None},
        {"From": ""},
        {"NumMedia": "many"},
        {"NumMedia": "3"},
    ],
)
def test_signed_but_malformed_form_is_400(changes: dict[str, str | None]) -> None:
    """A genuine signature over a form that lacks what a message needs is a MalformedRequest."""
    with pytest.raises(MalformedRequestError):
        parse(edited(payload("sms_text.form"), **changes))


def test_empty_signed_body_is_malformed() -> None:
    """A validly signed empty body carries no message id."""
    with pytest.raises(MalformedRequestError):
        parse(b"")


# --- properties -----------------------------------------------------------------------------

header_names = st.sampled_from(
    ["x-twilio-signature", "x-twilio-webhooks-signature-settings", "content-type", "x-other"]
)
form_fields = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "MessageSid",
                "SmsSid",
                "From",
                "Body",
                "NumMedia",
                "MediaUrl0",
                "MediaUrl1",
                "MediaContentType0",
                "MessageStatus",
                "SmsStatus",
                "WaId",
                "ProfileName",
                "Latitude",
                "Longitude",
                "ButtonText",
                "ExternalUserId",
                "ParentExternalUserId",
            ]
        )
        | st.text(max_size=8),
        st.text(max_size=30)
        | st.sampled_from(
            [
                "0",
                "1",
                "2",
                "received",
                "delivered",
                "+14155552671",
                "whatsapp:+5511987654321",
                "whatsapp:US.13491208655302741918",
                "rcs:+14155552671",
                "US.13491208655302741918",
                "16505551234",
                "22395",
                "-1",
            ]
        ),
    ),
    max_size=12,
)


def outcome(raw: RawRequest) -> Parsed | ChannelError:
    try:
        return ADAPTER.parse(raw, SECRETS, NOW)
    except ChannelError as exc:
        return exc


@given(body=st.binary(max_size=2048), headers=st.dictionaries(header_names, st.text(max_size=60)))
def test_any_request_gives_parsed_or_channel_error(body: bytes, headers: dict[str, str]) -> None:
    """Whatever unsigned request arrives is refused with a ChannelError: never parsed, no crash."""
    raw = RawRequest(method="POST", url=URL, headers=headers, body=body)
    # Not `outcome()`: it turns every ChannelError into a value, so nothing could fail here.
    with pytest.raises(ChannelError):
        ADAPTER.parse(raw, SECRETS, NOW)


@given(body=st.binary(max_size=2048))
def test_validly_signed_random_bytes_reach_the_parser_safely(body: bytes) -> None:
    """Random bytes with a genuine signature get past verification and still never crash."""
    result = outcome(request(body))
    assert not isinstance(result, InvalidSignatureError)
    assert isinstance(result, Parsed | ChannelError)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(fields=form_fields)
def test_validly_signed_random_forms_give_parsed_or_400(fields: list[tuple[str, str]]) -> None:
    """Signed forms of Twilio-like fields parse to messages that hold their invariants, or 400."""
    result = outcome(request(urlencode(fields).encode()))
    assert isinstance(result, Parsed | MalformedRequestError)
    if isinstance(result, Parsed):
        for message in result.messages:
            assert message.channel in ("sms", "whatsapp")
            assert message.phone or message.bsuid
            assert message.phone is None or message.phone.startswith("+")
            assert message.provider_message_id
            assert message.received_at == NOW
