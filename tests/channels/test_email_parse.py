"""The RFC 5322 reading both email adapters share: mailboxes, dates, and auto-reply signals."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from channels.email_parse import (
    Mailbox,
    automated_reason,
    clean_message_id,
    decoded_header,
    fallback_message_id,
    message_text,
    parse_mailbox,
    received_at,
)

NOW = datetime(2025, 11, 26, 13, 0, tzinfo=UTC)
PERSON = "Maria <maria@example.net>"


@pytest.mark.parametrize(
    ("headers", "senders", "content_type", "reason"),
    [
        ([("Auto-Submitted", "auto-replied")], [PERSON], None, "auto-submitted"),
        (
            [("auto-submitted", "Auto-Generated; owner-email=x@y.z")],
            [PERSON],
            None,
            "auto-submitted",
        ),
        ([("Precedence", "bulk")], [PERSON], None, "precedence bulk"),
        ([("Precedence", " JUNK ")], [PERSON], None, "precedence junk"),
        ([("Precedence", "auto_reply")], [PERSON], None, "precedence auto_reply"),
        ([("X-Autoreply", "yes")], [PERSON], None, "auto-reply"),
        ([("X-Autorespond", "Out of office")], [PERSON], None, "auto-reply"),
        ([], ["MAILER-DAEMON@mx.example.net (Mail Delivery System)"], None, "mailer-daemon sender"),
        ([], [PERSON, "postmaster@example.net"], None, "mailer-daemon sender"),
        ([], ["MAILER-DAEMON"], None, "mailer-daemon sender"),
        (
            [],
            [PERSON],
            "multipart/report; report-type=delivery-status; boundary=x",
            "delivery report",
        ),
        ([("Return-Path", "<>")], [PERSON], None, "null return path"),
    ],
)
def test_automated_messages_are_named(
    headers: list[tuple[str, str]], senders: list[str], content_type: str | None, reason: str
) -> None:
    """Each auto-reply or bounce signal gives its reason."""
    assert automated_reason(headers, senders=senders, content_type=content_type) == reason


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("Auto-Submitted", "no")],
        [("Auto-Submitted", " No ")],
        [("Precedence", "list")],
        [("Return-Path", "<maria@example.net>")],
        [("Content-Type", "multipart/mixed; boundary=x")],
    ],
)
def test_mail_from_a_person_is_not_automated(headers: list[tuple[str, str]]) -> None:
    """`Auto-Submitted: no`, mailing lists and ordinary mail are people writing."""
    assert automated_reason(headers, senders=[PERSON, None], content_type="text/plain") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bob <Bob@Example.COM>", Mailbox("bob@example.com", "Bob")),
        ("bob@example.com", Mailbox("bob@example.com", None)),
        ('"Smith, John" <j@x.org>, other@x.org', Mailbox("j@x.org", "Smith, John")),
        ("=?UTF-8?B?5bGx55Sw5aSq6YOO?= <taro@example.jp>", Mailbox("taro@example.jp", "山田太郎")),
        ("=?ISO-8859-1?Q?Ren=E9?= <rene@example.fr>", Mailbox("rene@example.fr", "René")),
        ("", None),
        ("   ", None),
        (None, None),
        ("not an address", None),
        ("undisclosed-recipients:;", None),
    ],
)
def test_parse_mailbox(value: str | None, expected: Mailbox | None) -> None:
    """The first mailbox, lowercased, with its decoded display name; None when there is none."""
    assert parse_mailbox(value) == expected


@given(st.text(max_size=200))
def test_parse_mailbox_never_raises(value: str) -> None:
    """Any header text gives a Mailbox with an @ in its address, or None."""
    result = parse_mailbox(value)
    assert result is None or "@" in result.address


@given(st.text(max_size=200))
def test_received_at_is_always_aware_and_not_after_now(value: str) -> None:
    """Any Date header text gives an aware UTC time no later than now."""
    when = received_at(value, NOW)
    assert when.tzinfo is not None
    assert when <= NOW


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("Wed, 26 Nov 2025 07:41:03 -0500", datetime(2025, 11, 26, 12, 41, 3, tzinfo=UTC)),
        ("Wed, 26 Nov 2025 12:00:00 -0000", datetime(2025, 11, 26, 12, 0, tzinfo=UTC)),
        ("Thu, 27 Nov 2025 09:00:00 +0000", NOW),
        ("yesterday", NOW),
        (None, NOW),
    ],
)
def test_received_at(date: str | None, expected: datetime) -> None:
    """The Date header in UTC; now when it is missing, unreadable or in the future."""
    assert received_at(date, NOW) == expected


def test_clean_message_id_strips_angle_brackets() -> None:
    """`<id@host>` is stored as `id@host`; an empty one is no id."""
    assert clean_message_id(" <abc@example.com> ") == "abc@example.com"
    assert clean_message_id("<>") is None
    assert clean_message_id(None) is None


def test_fallback_message_id_depends_on_content_only() -> None:
    """The same sender, date, subject and text give the same id; other text another id."""
    first = fallback_message_id(sender="a@b.c", date="d", subject="s", text="t")
    assert first == fallback_message_id(sender="a@b.c", date="d", subject="s", text="t")
    assert first != fallback_message_id(sender="a@b.c", date="d", subject="s", text="u")
    # The separator keeps fields from running into each other.
    assert fallback_message_id(sender="a@b.c", date="d", subject="st", text="") != (
        fallback_message_id(sender="a@b.c", date="d", subject="s", text="t")
    )


def test_message_text_puts_subject_first_and_normalizes_newlines() -> None:
    """Subject, a blank line, then the body with LF newlines; nothing at all gives None."""
    assert message_text("Hello", "Line 1\r\nLine 2\r\n") == "Hello\n\nLine 1\nLine 2"
    assert message_text(None, "Body") == "Body"
    assert message_text("Subject only", "  ") == "Subject only"
    assert message_text(None, None) is None


def test_decoded_header_decodes_encoded_words() -> None:
    """RFC 2047 words in a Subject are decoded and folding whitespace collapsed."""
    assert decoded_header("subject", "=?UTF-8?Q?Caf=C3=A9?=\r\n  near by") == "Café near by"
    assert decoded_header("subject", None) is None
