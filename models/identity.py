"""Phone and email identities: parsed, validated, and put in the one form they are matched in."""

from __future__ import annotations

import re

import phonenumbers
from email_validator import EmailNotValidError, validate_email


class InvalidIdentityError(ValueError):
    """A phone or email that cannot be parsed; the message says why, for the user."""


def normalize_phone(raw: str, region: str = "US", *, international: bool = False) -> str:
    """E.164 for `raw`, read in `region`; `international` reads a number given without its `+`.

    A number that is possible but not known to be valid is kept: numbering plans change faster
    than the library, and a prospect's message must not be lost to that.
    """
    text = raw.strip()
    if international and not text.startswith("+"):
        text = "+" + text
    if not any(ch.isdigit() for ch in text):
        raise InvalidIdentityError(f"not a phone number: {raw!r}")
    try:
        number = phonenumbers.parse(text, region.upper())
    except phonenumbers.NumberParseException as exc:
        raise InvalidIdentityError(f"not a phone number: {raw!r}") from exc
    if not phonenumbers.is_possible_number(number):
        raise InvalidIdentityError(f"not a possible phone number: {raw!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def check_phone_in_any_region(raw: str) -> None:
    """Refuse what is a phone number in no region: no digit at all, or an international number
    (`+…`) that is not possible. A national number needs its region: normalize_phone checks it.
    """
    text = raw.strip()
    if not text.startswith("+"):
        if not any(ch.isdigit() for ch in text):
            raise InvalidIdentityError(f"not a phone number: {raw!r}")
        return
    normalize_phone(text)  # the region is not read for a number that starts with +


def normalize_email(raw: str) -> str:
    """The address validated (syntax only, no DNS) and lowercased whole, as it is stored."""
    try:
        result = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidIdentityError(f"not an email address: {raw!r} ({exc})") from exc
    return result.normalized.lower()


def is_valid_region(region: str) -> bool:
    return region.upper() in phonenumbers.SUPPORTED_REGIONS


def phone_variants(e164: str) -> list[str]:
    """Other spellings of the same line that WhatsApp is known to use.

    Brazil: mobile numbers gained a ninth digit (a leading 9 after the two-digit area code),
    and WhatsApp ids of older accounts still lack it. Mexico: mobiles used to carry a `1`
    after +52, which WhatsApp ids still show.
    """
    variants: list[str] = []
    if e164.startswith("+55"):
        rest = e164[3:]
        if len(rest) == 11 and rest[2] == "9":
            variants.append("+55" + rest[:2] + rest[3:])
        elif len(rest) == 10 and rest[2] in "6789":
            variants.append("+55" + rest[:2] + "9" + rest[2:])
    elif e164.startswith("+52"):
        rest = e164[3:]
        if len(rest) == 11 and rest[0] == "1":
            variants.append("+52" + rest[1:])
        elif len(rest) == 10:
            variants.append("+521" + rest)
    return variants


_NON_DIGITS = re.compile(r"\D+")


def digits_of(text: str) -> str:
    return _NON_DIGITS.sub("", text)
