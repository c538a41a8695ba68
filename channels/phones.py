"""Phone numbers as the providers give them: international, with or without the `+`."""

from __future__ import annotations

import phonenumbers


def international_e164(raw: str) -> str | None:
    """`raw` read as an international number, in E.164; None if it cannot be a phone number.

    Possible but not known to be valid is kept: numbering plans change faster than the library.
    """
    text = raw.strip()
    if not any(ch.isdigit() for ch in text):
        return None
    if not text.startswith("+"):
        text = "+" + text
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
