"""Phone and email normalization."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.identity import (
    InvalidIdentityError,
    digits_of,
    normalize_email,
    normalize_phone,
    phone_variants,
)


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("(415) 555-2671", "US", "+14155552671"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        (" +1 415 555 2671 ", "GB", "+14155552671"),
    ],
)
def test_phone_is_stored_in_e164(raw: str, region: str, expected: str) -> None:
    """A phone is read in the tenant's region and stored in E.164."""
    assert normalize_phone(raw, region) == expected


def test_international_without_plus_is_read_as_international() -> None:
    """WhatsApp ids and Telegram shared contacts omit the + but are international."""
    assert normalize_phone("5511987654321", "US", international=True) == "+5511987654321"


def test_possible_but_not_valid_number_is_kept() -> None:
    """A number of the right length but an unassigned range is still stored."""
    number = "+15550001234"  # 555-0xxx is fictional: possible, not valid
    assert not phonenumbers.is_valid_number(phonenumbers.parse(number))
    assert normalize_phone(number) == number


@pytest.mark.parametrize("raw", ["", "abc", "12", "+1 415 555 26719999999"])
def test_impossible_phone_is_refused(raw: str) -> None:
    """What cannot be a phone number raises a clear error."""
    with pytest.raises(InvalidIdentityError):
        normalize_phone(raw)


def test_email_is_lowercased() -> None:
    """Emails are stored lowercased, local part included."""
    assert normalize_email(" Jane.Smith@Example.COM ") == "jane.smith@example.com"


@pytest.mark.parametrize("raw", ["", "jane", "jane@", "@example.com", "a b@example.com"])
def test_invalid_email_is_refused(raw: str) -> None:
    """What is not an address raises a clear error."""
    with pytest.raises(InvalidIdentityError):
        normalize_email(raw)


def test_brazil_ninth_digit_variants() -> None:
    """A Brazilian mobile with and without the ninth digit are variants of each other."""
    assert phone_variants("+5511987654321") == ["+551187654321"]
    assert phone_variants("+551187654321") == ["+5511987654321"]


def test_mexico_one_variants() -> None:
    """+52 1 … and +52 … are variants of each other."""
    assert phone_variants("+5215512345678") == ["+525512345678"]
    assert phone_variants("+525512345678") == ["+5215512345678"]


def test_other_countries_have_no_variants() -> None:
    """Only the known national variants apply."""
    assert phone_variants("+14155552671") == []


def test_digits_of_keeps_digits_only() -> None:
    """A phone search matches on digits."""
    assert digits_of("555-123") == "555123"


@given(st.text(max_size=40), st.sampled_from(["US", "GB", "BR", "MX", "DE"]))
def test_phone_parser_returns_e164_or_raises(raw: str, region: str) -> None:
    """Any text gives an E.164 number or InvalidIdentityError, nothing else."""
    try:
        result = normalize_phone(raw, region)
    except InvalidIdentityError:
        return
    assert result.startswith("+")
    assert result[1:].isdigit()


@given(st.text(max_size=60))
def test_email_parser_returns_lowercase_or_raises(raw: str) -> None:
    """Any text gives a lowercased address or InvalidIdentityError, nothing else."""
    try:
        result = normalize_email(raw)
    except InvalidIdentityError:
        return
    assert result == result.lower()
    assert "@" in result
