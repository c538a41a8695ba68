"""The Telegram adapter against recorded Bot API updates: secret token, people, and not-people."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from channels.languages import ISO_639_1, language_of
from channels.telegram import ADAPTER, BUSINESS_OWNER, SERVICE_MESSAGE
from channels.text import storable
from models.languages import ISO_639_1 as MODELS_ISO_639_1

PAYLOADS = Path(__file__).parent.parent / "payloads" / "telegram"
SECRET = "s3cr3t-T0ken_for-telegram"
SECRETS = {"telegram_secret_token": SECRET}
NOW = datetime(2025, 11, 26, 13, 0, tzinfo=UTC)
URL = "https://intake.example.com/webhooks/t1/telegram"


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def request(body: bytes, token: str | None = SECRET, **headers: str) -> RawRequest:
    all_headers = {"content-type": "application/json", **headers}
    if token is not None:
        all_headers["x-telegram-bot-api-secret-token"] = token
    return RawRequest(method="POST", url=URL, headers=all_headers, body=body)


def parse(name: str) -> Parsed:
    return ADAPTER.parse(request(payload(name)), SECRETS, NOW)


def from_ana(**fields: Any) -> InboundMessage:
    """A message from the recorded sender, Ana, with the fields that differ per payload."""
    return InboundMessage(channel="telegram", sender_id="583920114", username="ana_souza", **fields)


def test_route_is_telegram() -> None:
    """The adapter is mounted at /webhooks/{tenant}/telegram."""
    assert ADAPTER.route == "telegram"


def test_text_message_becomes_one_inbound_message() -> None:
    """A private text message gives the sender's id, name, username, language and text."""
    assert parse("text.json") == Parsed(
        messages=(
            from_ana(
                provider_message_id="583920114:1042",
                received_at=datetime(2025, 11, 26, 12, 50, tzinfo=UTC),
                display_name="Ana Souza",
                language="pt",
                text="Olá! Is the 2-bedroom on Elm Street still available?",
            ),
        )
    )


def test_received_at_is_utc() -> None:
    """The message date is handed on as an aware UTC datetime."""
    message = parse("text.json").messages[0]
    assert message.received_at.utcoffset() is not None
    assert message.received_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_photo_with_caption_gives_largest_size_and_caption_as_text() -> None:
    """A photo is the file id of its largest size, and its caption is the message text."""
    caption = "This is my current lease, for reference"
    assert parse("photo_caption.json") == Parsed(
        messages=(
            from_ana(
                provider_message_id="583920114:1043",
                received_at=datetime(2025, 11, 26, 12, 51, tzinfo=UTC),
                display_name="Ana Souza",
                language="pt",
                text=caption,
                media=(
                    Media(kind="image", provider_id="AgACAgQAAxkBAAIBQ2VlargeAAo", caption=caption),
                ),
            ),
        )
    )


def test_shared_own_contact_gives_phone_in_e164() -> None:
    """A user sharing their own contact gains a phone, read as international without a +."""
    assert parse("own_contact.json") == Parsed(
        messages=(
            from_ana(
                provider_message_id="583920114:1044",
                received_at=datetime(2025, 11, 26, 12, 52, tzinfo=UTC),
                phone="+5511987654321",
                display_name="Ana",
                language="pt",
            ),
        )
    )


def test_shared_contact_of_someone_else_gives_no_phone() -> None:
    """Someone else's contact card is not the sender's phone."""
    assert parse("other_contact.json") == Parsed(
        messages=(
            from_ana(
                provider_message_id="583920114:1045",
                received_at=datetime(2025, 11, 26, 12, 53, tzinfo=UTC),
                display_name="Ana",
                language="pt",
            ),
        )
    )


def test_document_keeps_file_id_mime_type_and_name() -> None:
    """A document is handed on with its file id, MIME type and file name."""
    (message,) = parse("document.json").messages
    assert message.media == (
        Media(
            kind="document",
            mime_type="application/pdf",
            provider_id="BQACAgQAAxkBAAIBR2VpayslipAAo",
            filename="payslip-october.pdf",
        ),
    )
    assert message.text is None
    assert message.display_name == "Ana"
    assert message.username is None
    assert message.language is None


def test_voice_note_is_audio() -> None:
    """A voice note is audio media with its file id."""
    (message,) = parse("voice.json").messages
    assert message.media == (
        Media(kind="audio", mime_type="audio/ogg", provider_id="AwACAgQAAxkBAAIBSGVvoiceAAo"),
    )


def test_location_is_a_geo_uri() -> None:
    """A shared location becomes location media with a geo: URI."""
    (message,) = parse("location.json").messages
    assert message.media == (Media(kind="location", url="geo:-23.55052,-46.633308"),)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bot_sender.json", "bot sender"),
        ("channel_post.json", "channel post"),
        ("edited_message.json", "edited message"),
        ("callback_query.json", "callback query"),
    ],
)
def test_updates_not_from_a_person_are_ignored_with_a_reason(name: str, reason: str) -> None:
    """Bots, channel posts, edits and button presses carry no new message from a person."""
    assert parse(name) == Parsed(ignored=(reason,))


def test_message_without_from_is_ignored() -> None:
    """A group message sent on behalf of a chat (anonymous admin) has no person to record."""
    data = json.loads(payload("text.json"))
    del data["message"]["from"]
    data["message"]["sender_chat"] = {"id": -100123, "type": "supergroup", "title": "Tenants"}
    parsed = ADAPTER.parse(request(json.dumps(data).encode()), SECRETS, NOW)
    assert parsed == Parsed(ignored=("no person sender",))


def test_redelivery_gives_the_same_message() -> None:
    """Telegram retrying an update gives an identical message, so it is recorded once."""
    first = parse("text.json")
    again = parse("text.json")
    assert first == again
    assert again.messages[0].provider_message_id == "583920114:1042"


def test_group_message_is_keyed_by_group_chat() -> None:
    """In a group, the provider id is the group's chat id and the message id."""
    data = json.loads(payload("text.json"))
    data["message"]["chat"] = {"id": -1001234567890, "type": "supergroup", "title": "Tenants"}
    (message,) = ADAPTER.parse(request(json.dumps(data).encode()), SECRETS, NOW).messages
    assert message.provider_message_id == "-1001234567890:1042"
    assert message.sender_id == "583920114"


# --- Telegram Business, service messages, older updates ------------------------------------

CONNECTION = "AQADcQAAAAEAAAB7pd8jVgk3AAg"


def parse_json(data: Any) -> Parsed:
    return ADAPTER.parse(request(json.dumps(data).encode()), SECRETS, NOW)


def test_business_customer_message_is_from_the_customer() -> None:
    """A business_message from the customer is theirs, with the business connection recorded."""
    assert parse("business_message.json") == Parsed(
        messages=(
            from_ana(
                provider_message_id=f"business:{CONNECTION}:583920114:311",
                received_at=datetime.fromtimestamp(1764165000, tz=UTC),
                display_name="Ana Souza",
                language="pt",
                text="Hi! Do you allow cats in the 1-bedroom?",
                business_connection_id=CONNECTION,
            ),
        )
    )


def test_business_message_id_differs_from_the_bots_own_chat() -> None:
    """The customer's business chat and their chat with the bot never share a provider id."""
    data = json.loads(payload("business_message.json"))
    plain: dict[str, Any] = {"update_id": 1, "message": dict(data["business_message"])}
    del plain["message"]["business_connection_id"]
    (business,) = parse("business_message.json").messages
    (direct,) = parse_json(plain).messages
    assert business.provider_message_id != direct.provider_message_id
    assert direct.business_connection_id is None


@pytest.mark.parametrize("name", ["business_owner_reply.json", "business_bot_reply.json"])
def test_business_owners_own_replies_are_outbound(name: str) -> None:
    """The owner's reply (from.id is not the chat's) or its business bot's is not a prospect."""
    assert parse(name) == Parsed(ignored=(BUSINESS_OWNER,))


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("edited_business_message.json", "edited message"),
        ("deleted_business_messages.json", "deleted messages"),
        ("business_connection.json", "business connection"),
        ("pinned_message.json", SERVICE_MESSAGE),
        ("new_chat_members.json", SERVICE_MESSAGE),
    ],
)
def test_business_updates_and_service_messages_are_not_messages(name: str, reason: str) -> None:
    """Business edits, deletions and connections, pins and joins: acknowledged, with why."""
    assert parse(name) == Parsed(ignored=(reason,))


def test_update_without_is_bot_is_still_a_person() -> None:
    """The Bot API's own sample update, which predates is_bot, is a message from a person."""
    (message,) = parse("no_is_bot.json").messages
    assert (message.sender_id, message.display_name, message.text) == (
        "1111111",
        "Test Firstname Test Lastname",
        "/start",
    )


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_location_with_non_finite_coordinates_is_malformed(value: str) -> None:
    """A location whose latitude is NaN or infinite is refused like any other mistyped field."""
    body = payload("location.json").replace(b"-23.55052", value.encode())
    assert body != payload("location.json")
    with pytest.raises(MalformedRequestError):
        ADAPTER.parse(request(body), SECRETS, NOW)


@pytest.mark.parametrize(
    ("code", "language"),
    [("pt-br", "pt"), ("en", "en"), ("zh_Hans", "zh"), ("xx", None), ("iw", None), ("ü1", None)],
)
def test_language_is_an_iso_639_1_code_or_none(code: str, language: str | None) -> None:
    """language_code gives its ISO 639-1 primary subtag, or None when it is not one."""
    data = json.loads(payload("text.json"))
    data["message"]["from"]["language_code"] = code
    (message,) = parse_json(data).messages
    assert message.language == language


def test_language_codes_are_the_ones_contacts_accept() -> None:
    """The adapter's ISO 639-1 set is the models' set, so a language it hands on is storable."""
    assert ISO_639_1 == MODELS_ISO_639_1


@given(tag=st.text(max_size=12))
def test_language_of_any_tag_is_a_known_code_or_none(tag: str) -> None:
    """Whatever a client puts in language_code, the adapter hands on a known code or nothing."""
    assert language_of(tag) in MODELS_ISO_639_1 | {None}


# --- the secret token ---------------------------------------------------------------------


def test_wrong_secret_token_is_refused() -> None:
    """A header that differs from the tenant's token is a 403."""
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(request(payload("text.json"), token=SECRET + "x"), SECRETS, NOW)


def test_missing_secret_token_is_refused() -> None:
    """No header at all is a 403, even for a well-formed update."""
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(request(payload("text.json"), token=None), SECRETS, NOW)


def test_non_ascii_secret_token_is_refused_not_crashed() -> None:
    """A header with non-ASCII text is a wrong token, not a TypeError."""
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(request(payload("text.json"), token="sécret"), SECRETS, NOW)


def test_token_is_checked_before_the_body_is_parsed() -> None:
    """A garbage body without the token is a 403, not a 400: nothing is read unverified."""
    with pytest.raises(InvalidSignatureError):
        ADAPTER.parse(request(b"{not json", token="nope"), SECRETS, NOW)


def test_tenant_without_token_is_not_configured() -> None:
    """A tenant that never set telegram_secret_token cannot receive Telegram updates."""
    with pytest.raises(ChannelNotConfiguredError):
        ADAPTER.parse(request(payload("text.json")), {}, NOW)


# --- malformed bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"[1, 2]",
        b'"update"',
        b"\xff\xfe\x00garbage",
        b'{"message": {"text": "no update id"}}',
        b'{"update_id": 1, "message": "text"}',
        b'{"update_id": 1, "message": {"message_id": 1, "chat": {"id": 1, "type": "private"}}}',
        b'{"update_id": 1, "message": {"message_id": "x", "date": 1, '
        b'"chat": {"id": 1, "type": "private"}, "from": {"id": 1, "is_bot": false, '
        b'"first_name": "A"}}}',
        b"[" * 100_000,
    ],
)
def test_malformed_bodies_are_400(body: bytes) -> None:
    """A verified body that is not a Bot API Update is a MalformedRequestError."""
    with pytest.raises(MalformedRequestError):
        ADAPTER.parse(request(body), SECRETS, NOW)


# --- properties -----------------------------------------------------------------------------

headers_strategy = st.dictionaries(
    st.text(min_size=1, max_size=30).map(str.lower), st.text(max_size=60), max_size=5
)


def _parsed_or_channel_error(raw: RawRequest) -> None:
    try:
        result = ADAPTER.parse(raw, SECRETS, NOW)
    except ChannelError:
        return
    assert isinstance(result, Parsed)
    # Whatever text a payload carries, what is handed on can be stored as it is.
    assert all(message == storable(message) for message in result.messages)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=2000), headers=headers_strategy)
def test_any_bytes_and_headers_give_parsed_or_channel_error(
    body: bytes, headers: dict[str, str]
) -> None:
    """Whatever arrives, the adapter answers with Parsed or a ChannelError, nothing else."""
    _parsed_or_channel_error(RawRequest(method="POST", url=URL, headers=headers, body=body))


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=2000))
def test_any_bytes_with_valid_token_give_parsed_or_channel_error(body: bytes) -> None:
    """With the right token the parser itself meets arbitrary bytes, and still never crashes."""
    _parsed_or_channel_error(request(body))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
message_keys = st.sampled_from(
    [
        "message_id",
        "date",
        "chat",
        "from",
        "text",
        "caption",
        "photo",
        "document",
        "contact",
        "location",
        "voice",
        "sticker",
        "sender_chat",
        "business_connection_id",
        "sender_business_bot",
        "pinned_message",
    ]
)


@st.composite
def update_like(draw: st.DrawFn) -> dict[str, Any]:
    """Dicts shaped like Updates, with fields kept, dropped or replaced by other JSON."""
    base: dict[str, Any] = json.loads(
        payload(
            draw(
                st.sampled_from(
                    [
                        "text.json",
                        "photo_caption.json",
                        "own_contact.json",
                        "business_message.json",
                        "business_owner_reply.json",
                        "no_is_bot.json",
                    ]
                )
            )
        )
    )
    message = base.get("message") or base["business_message"]
    for key in draw(st.lists(message_keys, max_size=4)):
        if draw(st.booleans()):
            message.pop(key, None)
        else:
            message[key] = draw(json_values)
    if draw(st.booleans()):
        message["from"] = draw(
            st.fixed_dictionaries(
                {"id": json_values, "first_name": json_values},
                optional={
                    "is_bot": json_values,
                    "last_name": json_values,
                    "language_code": json_values,
                    "username": json_values,
                },
            )
        )
    return base


@settings(max_examples=300, deadline=None)
@given(data=update_like())
def test_update_shaped_json_gives_parsed_or_channel_error(data: dict[str, Any]) -> None:
    """Updates with wrong types or missing fields are refused as malformed, never crash."""
    _parsed_or_channel_error(request(json.dumps(data).encode()))


def test_surrogates_and_nuls_in_text_are_made_storable() -> None:
    """JSON escapes for lone surrogates and NUL do not reach the database as they are."""
    body = payload("text.json").replace(
        b'"first_name": "Ana",', b'"first_name": "A\\ud800na\\u0000",', 1
    )
    data = json.loads(body)
    data["message"]["text"] = "hi\u0000 there \ud83d"
    (message,) = ADAPTER.parse(request(json.dumps(data).encode()), SECRETS, NOW).messages
    assert message.text == "hi there \ufffd"
    assert message.display_name == "A\ufffdna Souza"


def test_channel_post_forwarded_to_its_discussion_group_is_not_a_person() -> None:
    """An automatic forward (from Telegram's 777000, is_bot false, on behalf of the channel)
    is a channel post, not a contact named "Telegram"."""
    assert parse("automatic_forward.json") == Parsed(ignored=("channel post",))


def test_group_message_on_behalf_of_a_group_is_no_person_sender() -> None:
    """An anonymous admin (`from` @GroupAnonymousBot, `sender_chat` the group) is no person."""
    data = json.loads(payload("text.json"))
    data["message"]["from"] = {
        "id": 1087968824,
        "is_bot": True,
        "first_name": "Group",
        "username": "GroupAnonymousBot",
    }
    data["message"]["sender_chat"] = {"id": -100123, "type": "supergroup", "title": "Tenants"}
    parsed = ADAPTER.parse(request(json.dumps(data).encode()), SECRETS, NOW)
    assert parsed == Parsed(ignored=("no person sender",))


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("message_reaction.json", "reaction"),
        ("chat_join_request.json", "join request"),
        ("poll_answer.json", "poll update"),
    ],
)
def test_updates_without_a_message_are_skipped_with_their_own_reason(
    name: str, reason: str
) -> None:
    """Reactions, join requests and poll answers are named for what they are."""
    assert parse(name) == Parsed(ignored=(reason,))


def test_skipped_update_is_read_from_the_json_not_the_library() -> None:
    """An update we skip is never a 400 because python-telegram-bot would refuse its shape."""
    data = json.loads(payload("poll_answer.json"))
    del data["poll_answer"]["option_persistent_ids"]  # required by the library since 9.6
    parsed = ADAPTER.parse(request(json.dumps(data).encode()), SECRETS, NOW)
    assert parsed == Parsed(ignored=("poll update",))


def test_update_without_an_update_id_is_malformed() -> None:
    """A JSON object that is not an Update at all is still a 400."""
    with pytest.raises(MalformedRequestError):
        ADAPTER.parse(request(b'{"message_reaction": {}}'), SECRETS, NOW)


@pytest.mark.parametrize("name", ["checklist_tasks_done.json", "web_app_data.json"])
def test_newer_service_messages_are_not_words_from_the_sender(name: str) -> None:
    """Service messages of Bot API 7-10 (checklists, Web App data, …) are skipped as such."""
    assert parse(name) == Parsed(ignored=(SERVICE_MESSAGE,))


def test_a_nested_object_the_library_refuses_does_not_cost_the_persons_message() -> None:
    """A reply to a poll in a shape python-telegram-bot refuses is still the sender's message,
    read from the fields a message is read for, and not a 400."""
    data = json.loads(payload("text.json"))
    older_poll = {
        "id": "5406031000000000001",
        "question": "Which day suits you?",
        "options": [{"text": "Saturday", "voter_count": 1}],  # no 9.6 persistent_id
        "total_voter_count": 1,
        "is_closed": False,
        "is_anonymous": False,
        "type": "regular",
        "allows_multiple_answers": False,
    }
    data["message"]["reply_to_message"] = {
        "message_id": 1000,
        "from": data["message"]["from"],
        "chat": data["message"]["chat"],
        "date": 1764161000,
        "poll": older_poll,
    }
    (message,) = ADAPTER.parse(request(json.dumps(data).encode()), SECRETS, NOW).messages
    assert (message.sender_id, message.provider_message_id) == ("583920114", "583920114:1042")
    assert message.text == data["message"]["text"]


def test_a_service_message_read_again_is_still_a_service_message() -> None:
    """The service check reads the JSON, so a pin of a message the library refuses is skipped."""
    data = json.loads(payload("pinned_message.json"))
    data["message"]["pinned_message"]["poll"] = {"id": "1", "question": "?"}  # not a Poll
    parsed = ADAPTER.parse(request(json.dumps(data).encode()), SECRETS, NOW)
    assert parsed == Parsed(ignored=(SERVICE_MESSAGE,))
