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
    Identity,
    InboundMessage,
    InvalidSignatureError,
    MalformedRequestError,
    Media,
    Parsed,
    RawRequest,
)
from channels.text import storable
from channels.whatsapp import (
    ADAPTER,
    ECHO,
    EDITED,
    NO_SENDER,
    REACTION,
    REVOKED,
    STATUS_CALLBACK,
    SYSTEM_MESSAGE,
    parse_notification,
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
    ("name", "reason"),
    [
        ("reaction.json", REACTION),
        ("edit.json", EDITED),
        ("revoke.json", REVOKED),
        ("smb_message_echoes.json", ECHO),
    ],
)
def test_reactions_edits_revokes_and_echoes_are_not_messages(name: str, reason: str) -> None:
    """A reaction, an edit or revoke of an earlier message, a business echo: skipped with why."""
    assert parse(payload(name)) == Parsed(ignored=(reason,))


def test_other_system_notices_are_skipped() -> None:
    """A system notice that names no new number or user id is skipped as a system message."""
    data = json.loads(payload("system.json"))
    data["entry"][0]["changes"][0]["value"]["messages"][0]["system"]["type"] = "security_changed"
    assert parse_json(data) == Parsed(ignored=(SYSTEM_MESSAGE,))


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


def test_sender_without_any_id_is_skipped_with_a_reason() -> None:
    """A message naming neither a wa_id nor a user id, with no profile to say, is skipped."""
    data = json.loads(payload("text.json"))
    value = data["entry"][0]["changes"][0]["value"]
    del value["messages"][0]["from"]
    del value["contacts"]
    assert parse_json(data) == Parsed(ignored=(NO_SENDER,))


# --- 2026 senders: business-scoped user ids, changed ids, shared phones, groups -------------

BSUID = "US.13491208655302741918"


def test_bsuid_only_sender_is_a_person() -> None:
    """A username user with no `from`: BSUID is the identity, username only a name, no phone."""
    assert parse(payload("bsuid_only.json")) == Parsed(
        messages=(
            InboundMessage(
                channel="whatsapp",
                provider_message_id="wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQkJCMTExMTExMTExMTExMTExMQA=",
                received_at=at(1775050000),
                bsuid=BSUID,
                display_name="Sheena Nelson",
                username="sheena.n",
                text="Is the 2-bed still available?",
            ),
        )
    )


def test_wa_id_and_bsuid_together_are_one_sender() -> None:
    """A message with both `from` and `from_user_id` carries wa_id, BSUID and phone together."""
    (message,) = parse(payload("bsuid_with_wa_id.json")).messages
    assert message == sheena(
        "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQkJCMjIyMjIyMjIyMjIyMjIyMgA=",
        1775050100,
        bsuid=BSUID,
        username="sheena.n",
        text="Here is my number too",
    )
    assert message.identities() == (
        Identity("whatsapp", "16505551234"),
        Identity("whatsapp_bsuid", BSUID),
        Identity("phone", "+16505551234"),
    )


def test_phone_shared_on_request_is_the_senders_own() -> None:
    """A contacts message with origin contact_request gives the BSUID sender that phone."""
    (message,) = parse(payload("contact_request.json")).messages
    assert (message.sender_id, message.bsuid, message.phone) == (None, BSUID, "+16505551234")
    assert message.display_name == "Sheena Nelson"
    assert message.text == "Shared contact: Sheena Nelson (+1 650-555-1234)"


def test_shared_contact_cards_are_a_message_without_their_phones() -> None:
    """Cards of other people (a list) are kept as a message; their numbers never the sender's."""
    assert parse(payload("shared_contacts.json")).messages == (
        sheena(
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQkJCNDQ0NDQ0NDQ0NDQ0NDQ0NAA=",
            1775050300,
            text=(
                "Shared contact: Barbara J. Johnson (+1 (415) 555-0150); "
                "Luis Ortega (+52 1 55 1234 5678)"
            ),
            media=(Media(kind="contacts", caption="Barbara J. Johnson, Luis Ortega"),),
        ),
    )


def test_contact_request_origin_does_not_override_the_senders_own_number() -> None:
    """A sender with a wa_id keeps the wa_id's phone, whatever the shared card says."""
    data = json.loads(payload("shared_contacts.json"))
    data["entry"][0]["changes"][0]["value"]["messages"][0]["origin"] = "contact_request"
    (message,) = parse_json(data).messages
    assert message.phone == "+16505551234"


def test_changed_number_retires_the_old_number_and_user_id() -> None:
    """user_changed_number: new wa_id, phone and BSUID on the notice; the old ones retired."""
    assert parse(payload("changed_number.json")).messages == (
        InboundMessage(
            channel="whatsapp",
            provider_message_id="wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQkJCNTU1NTU1NTU1NTU1NTU1NQA=",
            received_at=at(1775050400),
            sender_id="12195555358",
            bsuid="US.99887766554433221100",
            phone="+12195555358",
            text="User Sheena Nelson changed from 16505551234 to 12195555358",
            retired=(
                Identity("whatsapp", "16505551234"),
                Identity("phone", "+16505551234"),
                Identity("whatsapp_bsuid", BSUID),
            ),
            system=True,
        ),
    )


def test_changed_number_in_the_older_format_retires_the_old_number() -> None:
    """The documented notice without user ids: new wa_id and phone, old wa_id and phone retired."""
    (message,) = parse(payload("system.json")).messages
    assert (message.system, message.sender_id, message.phone, message.bsuid) == (
        True,
        "16505559876",
        "+16505559876",
        None,
    )
    assert message.retired == (
        Identity("whatsapp", "16505551234"),
        Identity("phone", "+16505551234"),
    )


def test_changed_user_id_retires_the_old_user_id() -> None:
    """user_changed_user_id: the new BSUID on the notice, the previous one retired, no phone."""
    assert parse(payload("changed_user_id.json")).messages == (
        InboundMessage(
            channel="whatsapp",
            provider_message_id="wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQkJCNjY2NjY2NjY2NjY2NjY2NgA=",
            received_at=at(1775050500),
            bsuid="US.55443322110099887766",
            text="User's business-scoped user ID changed",
            retired=(Identity("whatsapp_bsuid", BSUID),),
            system=True,
        ),
    )


@pytest.mark.parametrize("name", ["changed_number.json", "changed_user_id.json"])
def test_changed_id_notice_without_the_new_id_is_skipped(name: str) -> None:
    """A change notice that leaves out the new id has nothing to link: skipped, not a 400."""
    data = json.loads(payload(name))
    system = data["entry"][0]["changes"][0]["value"]["messages"][0]["system"]
    system.pop("wa_id", None)
    system.pop("user_id", None)
    assert parse_json(data) == Parsed(ignored=(SYSTEM_MESSAGE,))


def test_group_message_records_the_group() -> None:
    """A message written in a group is from its person, with the group id recorded."""
    (message,) = parse(payload("group.json")).messages
    assert message == sheena(
        "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQkJDMDAwMDAwMDAwMDAwMDAwMAA=",
        1775050900,
        text="Can we all come to the viewing?",
        group_id="Y2FwaV9ncm91cDoxNzA1NTU1MDEzOToxMjAzNjM0MDQ2OTQyMzM4MjAZD",
    )


def test_message_from_the_business_number_itself_is_an_echo() -> None:
    """A group message the business sent (from its own display number) is not a prospect's."""
    data = json.loads(payload("group.json"))
    data["entry"][0]["changes"][0]["value"]["messages"][0]["from"] = "15550783881"
    assert parse_json(data) == Parsed(ignored=(ECHO,))


def test_mexican_wa_id_with_the_old_mobile_1_is_a_phone() -> None:
    """Meta's 521… wa_id, which phonenumbers calls impossible, still gives that phone."""
    (message,) = parse(payload("mexico.json")).messages
    assert (message.sender_id, message.phone) == ("5215512345678", "+5215512345678")


def test_profile_of_another_sender_is_not_used() -> None:
    """A contacts entry for another wa_id lends neither its name nor its BSUID."""
    data = json.loads(payload("bsuid_with_wa_id.json"))
    value = data["entry"][0]["changes"][0]["value"]
    value["contacts"][0]["wa_id"] = "447700900123"
    del value["messages"][0]["from_user_id"]
    (message,) = parse_json(data).messages
    assert (message.sender_id, message.bsuid, message.display_name) == ("16505551234", None, None)


def test_parse_notification_takes_a_decoded_notification() -> None:
    """The shared route's entry point reads an already verified, decoded notification."""
    assert parse_notification(json.loads(payload("bsuid_only.json"))).messages[0].bsuid == BSUID


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
                    "from_user_id",
                    "user_id",
                    "username",
                    "origin",
                    "phones",
                    "phone",
                    "system",
                    "previous_user_id",
                    "group_id",
                    "message_echoes",
                    "formatted_name",
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
            assert message.sender_id or message.bsuid
            assert message == storable(message)


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


RECORDED = {
    name: json.loads(payload(name))
    for name in (
        "batch.json",
        "bsuid_with_wa_id.json",
        "contact_request.json",
        "shared_contacts.json",
        "changed_number.json",
        "changed_user_id.json",
        "smb_message_echoes.json",
        "group.json",
    )
}
RECORDED_PATHS = [(name, path) for name, doc in RECORDED.items() for path in paths_of(doc)[1:]]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(RECORDED_PATHS), replacement=json_values)
def test_any_one_field_of_a_recorded_payload_replaced_gives_parsed_or_400(
    where: tuple[str, tuple[Any, ...]], replacement: Any
) -> None:
    """A recorded notification with any single value swapped for junk is parsed or a 400."""
    name, path = where
    data = json.loads(json.dumps(RECORDED[name]))
    node = data
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = replacement
    result = outcome(post(json.dumps(data).encode()))
    assert isinstance(result, Parsed | MalformedRequestError)


def test_a_change_with_only_errors_is_counted_as_an_error_notification() -> None:
    """Meta's `errors`-only value is acknowledged with a reason, not silently."""
    assert parse(payload("errors_only.json")) == Parsed(ignored=("error notification",))


def test_an_order_keeps_the_note_the_person_typed() -> None:
    """A catalog order is a person's message whose text is the order's `text`."""
    (message,) = parse(payload("order.json")).messages
    assert (message.phone, message.text) == ("+16505551234", "Can I reserve these for Saturday?")
