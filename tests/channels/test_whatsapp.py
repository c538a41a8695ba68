"""The Meta WhatsApp Cloud API adapter on documented notifications, signed as Meta signs them."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
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
from channels.whatsapp import (
    ADAPTER,
    NO_SENDER_PHONE,
    REACTION,
    STATUS_CALLBACK,
    SYSTEM_MESSAGE,
)

PAYLOADS = Path(__file__).parent.parent / "payloads" / "whatsapp"
URL = "https://intake.example.com/webhooks/4b1d6a9e-3c1f-4e0a-9d51-2f7c8e6b1a30/whatsapp"
APP_SECRET = "6f1c0d2e9b8a7c6d5e4f3a2b1c0d9e8f"
VERIFY = "lease-leads-verify-7d2c"
SECRETS = {"whatsapp_app_secret": APP_SECRET, "whatsapp_verify_token": VERIFY}
NOW = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    """X-Hub-Signature-256 as Meta computes it: hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(body: bytes, *, signature: str | None = None) -> RawRequest:
    headers = {"content-type": "application/json"}
    headers["x-hub-signature-256"] = sign(body) if signature is None else signature
    return RawRequest(method="POST", url=URL, headers=headers, body=body)


def parse(body: bytes, **kwargs: str) -> Parsed:
    return ADAPTER.parse(post(body, **kwargs), SECRETS, NOW)


def parse_json(data: Any) -> Parsed:
    return parse(json.dumps(data).encode())


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def sheena(wamid: str, seconds: int, **fields: Any) -> InboundMessage:
    return InboundMessage(
        channel="whatsapp",
        provider_message_id=wamid,
        received_at=at(seconds),
        sender_id="16505551234",
        phone="+16505551234",
        display_name="Sheena Nelson",
        **fields,
    )


def subscription(**query: str) -> RawRequest:
    return RawRequest(method="GET", url=URL, headers={}, body=b"", query=query)


# --- the GET subscription check -------------------------------------------------------------


def test_subscription_with_the_verify_token_echoes_the_challenge() -> None:
    """Meta's hub.mode=subscribe with the tenant's token is answered with hub.challenge."""
    raw = subscription(
        **{"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"}
    )
    assert ADAPTER.parse(raw, SECRETS, NOW) == Parsed(reply="1158201444")


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY, "hub.challenge": "1"},
        {"hub.verify_token": VERIFY, "hub.challenge": "1"},
        {},
    ],
)
def test_subscription_without_the_right_token_is_refused(query: dict[str, str]) -> None:
    """A wrong or missing token, or another mode, is a 403 and echoes nothing."""
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(subscription(**query), SECRETS, NOW)


def test_subscription_without_a_challenge_is_malformed() -> None:
    """The right token but no challenge to echo is a 400."""
    raw = subscription(**{"hub.mode": "subscribe", "hub.verify_token": VERIFY})
    with pytest.raises(MalformedRequestError):
        ADAPTER.parse(raw, SECRETS, NOW)


def test_subscription_without_a_configured_token_is_not_configured() -> None:
    """A tenant without whatsapp_verify_token cannot answer a subscription."""
    raw = subscription(
        **{"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1"}
    )
    with pytest.raises(ChannelNotConfiguredError):
        ADAPTER.parse(raw, {"whatsapp_app_secret": APP_SECRET}, NOW)


# --- messages -------------------------------------------------------------------------------


def test_text_message_is_paired_with_its_sender_profile() -> None:
    """A text message: wamid as id, wa_id as sender id, E.164 phone, profile name, timestamp."""
    assert parse(payload("text.json")) == Parsed(
        messages=(
            sheena(
                "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
                1749416383,
                text="Does it come with parking?",
            ),
        )
    )


def test_image_keeps_its_media_id_mime_type_and_caption() -> None:
    """An image becomes Media with Meta's media id to fetch later; its caption is the text."""
    assert parse(payload("image.json")).messages == (
        sheena(
            "wamid.HBgLMTY1MDUwNzY1MjAVAgASGBQzQUFBMjc3RjkwQzBDQ0JGQjM0NQA=",
            1749416400,
            text="The living room photo you asked for",
            media=(
                Media(
                    kind="image",
                    mime_type="image/jpeg",
                    provider_id="1003383421387256",
                    caption="The living room photo you asked for",
                ),
            ),
        ),
    )


def test_document_keeps_its_filename() -> None:
    """A document keeps filename, mime type, media id and caption."""
    (message,) = parse(payload("document.json")).messages
    assert message.media == (
        Media(
            kind="document",
            mime_type="application/pdf",
            provider_id="2107495923051839",
            filename="paystubs-2025.pdf",
            caption="My pay stubs",
        ),
    )
    assert message.text == "My pay stubs"


def test_voice_note_is_audio_without_text() -> None:
    """A voice note is audio media with no caption and no text."""
    (message,) = parse(payload("audio.json")).messages
    assert message.text is None
    assert message.media == (
        Media(kind="audio", mime_type="audio/ogg; codecs=opus", provider_id="1219164032870421"),
    )


def test_location_is_a_location_media() -> None:
    """A shared location becomes Media kind location: a geo: URI, captioned name and address."""
    assert parse(payload("location.json")).messages == (
        InboundMessage(
            channel="whatsapp",
            provider_message_id="wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNBMUIyQzNENEU1RjZBN0I4QzlEAA==",
            received_at=at(1749417000),
            sender_id="5511987654321",
            phone="+5511987654321",
            display_name="João Silva",
            media=(
                Media(
                    kind="location",
                    url="geo:-23.561414,-46.655881",
                    caption="MASP, Av. Paulista, 1578 - Bela Vista, São Paulo",
                ),
            ),
        ),
    )


def test_template_button_reply_text_is_the_message_text() -> None:
    """Tapping a template quick-reply button sends its label, which is the text."""
    (message,) = parse(payload("button.json")).messages
    assert message.text == "Yes, book a tour"


def test_interactive_list_reply_title_is_the_message_text() -> None:
    """Choosing a row of an interactive list sends its title, which is the text."""
    (message,) = parse(payload("interactive_list_reply.json")).messages
    assert message == sheena(
        "wamid.HBgLMTY1MDUwNzY1MjAVAgASGBQzRUVFMjQ3QTZEMDM0QjU2RTc4OQA=",
        1749417200,
        text="2 bedrooms",
    )


def test_interactive_button_reply_title_is_the_message_text() -> None:
    """Tapping an interactive reply button sends its title, which is the text."""
    data = json.loads(payload("interactive_list_reply.json"))
    message = data["entry"][0]["changes"][0]["value"]["messages"][0]
    message["interactive"] = {
        "type": "button_reply",
        "button_reply": {"id": "tour-yes", "title": "Book a tour"},
    }
    assert parse_json(data).messages[0].text == "Book a tour"


def test_batch_yields_every_message_of_every_sender() -> None:
    """One POST with two entries, three senders and four messages yields all four, in order."""
    parsed = parse(payload("batch.json"))
    assert parsed.messages == (
        sheena(
            "wamid.HBgLMTY1MDUwNzY1MjAVAgASGBQzMTExMTExMTExMTExMTExMQA=",
            1749418000,
            text="Hi again",
        ),
        InboundMessage(
            channel="whatsapp",
            provider_message_id="wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDMyMjIyMjIyMjIyMjIyMjIyMgA=",
            received_at=at(1749418001),
            sender_id="5511987654321",
            phone="+5511987654321",
            display_name="João Silva",
            text="Bom dia",
        ),
        sheena(
            "wamid.HBgLMTY1MDUwNzY1MjAVAgASGBQzMzMzMzMzMzMzMzMzMzMzMwA=",
            1749418002,
            media=(Media(kind="sticker", mime_type="image/webp", provider_id="870591874873498"),),
        ),
        InboundMessage(
            channel="whatsapp",
            provider_message_id="wamid.HBgMNDQ3NzAwOTAwMTIzFQIAEhgUMzQ0NDQ0NDQ0NDQ0NDQ0NDQ0AA==",
            received_at=at(1749418003),
            sender_id="447700900123",
            phone="+447700900123",
            display_name="Priya Patel",
            text="Walkthrough of my current flat",
            media=(
                Media(
                    kind="video",
                    mime_type="video/mp4",
                    provider_id="1188396528829155",
                    caption="Walkthrough of my current flat",
                ),
            ),
        ),
    )
    assert parsed.ignored == (STATUS_CALLBACK,)


def test_redelivery_gives_the_same_messages() -> None:
    """Meta retrying a notification yields identical messages, so each is stored once."""
    body = payload("batch.json")
    assert parse(body) == parse(body)


def test_unsupported_message_is_kept_without_content() -> None:
    """A type WhatsApp cannot show the business still comes from a person: kept, no text."""
    assert parse(payload("unsupported.json")) == Parsed(
        messages=(
            sheena("wamid.HBgLMTY1MDUwNzY1MjAVAgASGBQzSEhINzc4RDlBMzQ1Njc4OTAxMgA=", 1749417500),
        )
    )


def test_sender_without_profile_has_no_display_name() -> None:
    """A message whose sender is missing from `contacts` keeps its from as sender id."""
    data = json.loads(payload("text.json"))
    del data["entry"][0]["changes"][0]["value"]["contacts"]
    (message,) = parse_json(data).messages
    assert (message.sender_id, message.phone, message.display_name) == (
        "16505551234",
        "+16505551234",
        None,
    )


# --- not from a person ----------------------------------------------------------------------


def test_statuses_only_notification_has_no_messages() -> None:
    """Delivery and read receipts of the tenant's own messages make no contact."""
    assert parse(payload("statuses.json")) == Parsed(ignored=(STATUS_CALLBACK, STATUS_CALLBACK))


@pytest.mark.parametrize(
    ("name", "reason"), [("reaction.json", REACTION), ("system.json", SYSTEM_MESSAGE)]
)
def test_reactions_and_system_notices_are_not_messages(name: str, reason: str) -> None:
    """An emoji reaction to the tenant's message, or WhatsApp's number-change notice, is skipped."""
    assert parse(payload(name)) == Parsed(ignored=(reason,))


def test_other_webhook_fields_are_ignored() -> None:
    """A template status update on the same app is not a message."""
    assert parse(payload("template_status_update.json")) == Parsed(
        ignored=("message_template_status_update notification",)
    )


def test_other_meta_objects_are_ignored() -> None:
    """A Page or Instagram notification signed by the same app is skipped, not a 400."""
    parsed = parse_json({"object": "page", "entry": []})
    assert parsed.messages == ()
    assert parsed.ignored


def test_sender_without_phone_is_skipped_with_a_reason() -> None:
    """A message without `from` (a username-only user) is skipped and says why."""
    data = json.loads(payload("text.json"))
    del data["entry"][0]["changes"][0]["value"]["messages"][0]["from"]
    assert parse_json(data) == Parsed(ignored=(NO_SENDER_PHONE,))


# --- signatures -----------------------------------------------------------------------------


def test_missing_app_secret_is_not_configured() -> None:
    """A tenant without whatsapp_app_secret cannot verify notifications."""
    with pytest.raises(ChannelNotConfiguredError):
        ADAPTER.parse(post(payload("text.json")), {"whatsapp_verify_token": VERIFY}, NOW)


def test_wrong_secret_is_refused() -> None:
    """A body signed with another app's secret is a 403."""
    body = payload("text.json")
    with pytest.raises(InvalidSignatureError):
        parse(body, signature=sign(body, secret="another-app-secret"))


@pytest.mark.parametrize("signature", ["", "sha256=", "sha1=abc", "garbage"])
def test_missing_or_malformed_signature_is_refused(signature: str) -> None:
    """No signature, an empty one, or another scheme is a 403."""
    with pytest.raises(InvalidSignatureError):
        parse(payload("text.json"), signature=signature)


def test_absent_signature_header_is_refused() -> None:
    """A POST without X-Hub-Signature-256 at all is a 403."""
    raw = RawRequest(method="POST", url=URL, headers={}, body=payload("text.json"))
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(raw, SECRETS, NOW)


def test_body_changed_by_one_byte_is_refused() -> None:
    """Changing one byte of the signed body breaks the signature."""
    body = payload("text.json")
    tampered = body.replace(b"parking", b"parkinG")
    assert tampered != body
    with pytest.raises(InvalidSignatureError):
        parse(tampered, signature=sign(body))


def test_signature_is_checked_before_the_json() -> None:
    """An unsigned body that is not even JSON is a 403, not a 400: nothing is parsed first."""
    with pytest.raises(InvalidSignatureError):
        parse(b"{not json", signature=sign(b"something else"))


def test_uppercase_hex_signature_is_accepted() -> None:
    """The hex digest is compared without regard to case."""
    body = payload("text.json")
    signature = "sha256=" + sign(body).removeprefix("sha256=").upper()
    assert parse(body, signature=signature).messages


def test_other_methods_are_malformed() -> None:
    """Only GET and POST are WhatsApp webhook methods."""
    raw = RawRequest(method="PUT", url=URL, headers={}, body=b"")
    with pytest.raises(MalformedRequestError):
        ADAPTER.parse(raw, SECRETS, NOW)


# --- malformed after verification -----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'"a string"',
        b'{"object": "whatsapp_business_account"}',
        b'{"object": "whatsapp_business_account", "entry": {}}',
        b'{"object": "whatsapp_business_account", "entry": [{"changes": "x"}]}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_signed_but_unparseable_body_is_malformed(body: bytes) -> None:
    """A genuine signature over something that is not a notification is a 400."""
    with pytest.raises(MalformedRequestError):
        parse(body)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", None),
        ("timestamp", None),
        ("timestamp", "yesterday"),
        ("timestamp", "99999999999999999999"),
        ("timestamp", True),
        ("from", 16505551234),
        ("text", "not an object"),
    ],
)
def test_message_of_the_wrong_shape_is_malformed(field: str, value: Any) -> None:
    """A message without an id, with a bad timestamp or mistyped fields is a 400."""
    data = json.loads(payload("text.json"))
    message = data["entry"][0]["changes"][0]["value"]["messages"][0]
    if value is None:
        del message[field]
    else:
        message[field] = value
    with pytest.raises(MalformedRequestError):
        parse_json(data)


# --- properties -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "object",
                    "entry",
                    "changes",
                    "field",
                    "value",
                    "messages",
                    "contacts",
                    "statuses",
                    "from",
                    "id",
                    "timestamp",
                    "type",
                    "text",
                    "body",
                    "image",
                    "location",
                    "profile",
                    "name",
                    "wa_id",
                    "interactive",
                    "button_reply",
                    "title",
                    "latitude",
                    "longitude",
                ]
            )
            | st.text(max_size=6),
            children,
            max_size=6,
        )
    ),
    max_leaves=40,
)


def outcome(raw: RawRequest) -> Parsed | ChannelError:
    try:
        return ADAPTER.parse(raw, SECRETS, NOW)
    except ChannelError as exc:
        return exc


header_names = st.sampled_from(["x-hub-signature-256", "content-type", "x-other"])


@given(
    method=st.sampled_from(["GET", "POST", "PUT"]),
    body=st.binary(max_size=2048),
    headers=st.dictionaries(header_names, st.text(max_size=80)),
    query=st.dictionaries(
        st.sampled_from(["hub.mode", "hub.verify_token", "hub.challenge"]), st.text(max_size=20)
    ),
)
def test_any_request_gives_parsed_or_channel_error(
    method: str, body: bytes, headers: dict[str, str], query: dict[str, str]
) -> None:
    """Whatever unsigned request arrives is refused with a ChannelError: never parsed, no crash."""
    raw = RawRequest(method=method, url=URL, headers=headers, body=body, query=query)
    # Not `outcome()`: it turns every ChannelError into a value, so nothing could fail here.
    with pytest.raises(ChannelError):
        ADAPTER.parse(raw, SECRETS, NOW)


@given(body=st.binary(max_size=2048))
def test_validly_signed_random_bytes_reach_the_parser_safely(body: bytes) -> None:
    """Random bytes with a genuine signature get past verification and still never crash."""
    result = outcome(post(body))
    assert isinstance(result, Parsed | MalformedRequestError)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    data=json_values
    | st.fixed_dictionaries(
        {"object": st.just("whatsapp_business_account"), "entry": st.lists(json_values)}
    )
)
def test_validly_signed_random_json_gives_parsed_or_400(data: Any) -> None:
    """Signed JSON of any shape parses to whole messages, or is a MalformedRequest."""
    result = outcome(post(json.dumps(data).encode()))
    assert isinstance(result, Parsed | MalformedRequestError)
    if isinstance(result, Parsed):
        for message in result.messages:
            assert message.channel == "whatsapp"
            assert message.provider_message_id
            assert message.received_at.tzinfo is not None


def paths_of(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document."""
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += paths_of(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += paths_of(child, (*prefix, index))
    return found


BATCH = json.loads(payload("batch.json"))
BATCH_PATHS = paths_of(BATCH)[1:]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(BATCH_PATHS), replacement=json_values)
def test_any_one_field_of_a_real_batch_replaced_gives_parsed_or_400(
    path: tuple[Any, ...], replacement: Any
) -> None:
    """A documented batch with any single value swapped for junk is parsed or a 400."""
    data = json.loads(json.dumps(BATCH))
    node = data
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = replacement
    result = outcome(post(json.dumps(data).encode()))
    assert isinstance(result, Parsed | MalformedRequestError)
