"""Making adapter output storable: no lone surrogates, no NULs, nothing else changed."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from channels.base import Identity, InboundMessage, Media
from channels.text import clean_text, storable

NOW = datetime(2025, 11, 26, 13, 0, tzinfo=UTC)


@given(st.text())
def test_clean_text_is_utf8_encodable_and_nul_free(text: str) -> None:
    """Any Python string, surrogates included, comes out encodable and without NUL."""
    cleaned = clean_text(text)
    cleaned.encode("utf-8")
    assert "\x00" not in cleaned


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00")))
def test_clean_text_keeps_valid_text_unchanged(text: str) -> None:
    """Text that was already storable is returned as it was."""
    assert clean_text(text) == text


def test_storable_cleans_message_and_media_fields() -> None:
    """Every string field is cleaned, in the message and in its media."""
    message = InboundMessage(
        channel="email",
        provider_message_id="id\x00",
        received_at=NOW,
        display_name="Ana\udce2",
        text="hi\x00",
        media=(Media(kind="document", filename="a\ud800.pdf"),),
    )
    assert storable(message) == InboundMessage(
        channel="email",
        provider_message_id="id",
        received_at=NOW,
        display_name="Ana\ufffd",
        text="hi",
        media=(Media(kind="document", filename="a\ufffd.pdf"),),
    )


def test_storable_cleans_retired_identities() -> None:
    """A retired identity from a hostile payload is cleaned like any other text."""
    message = InboundMessage(
        channel="whatsapp",
        provider_message_id="wamid.1",
        received_at=NOW,
        retired=(Identity("whatsapp_bsuid", "US.1\ud800\x00"),),
    )
    assert storable(message).retired == (Identity("whatsapp_bsuid", "US.1\ufffd"),)


def test_storable_returns_clean_messages_as_they_are() -> None:
    """A clean message is returned unchanged."""
    message = InboundMessage(channel="telegram", provider_message_id="1:2", received_at=NOW)
    assert storable(message) is message
