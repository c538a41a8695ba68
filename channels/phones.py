"""Phone numbers as the providers give them: international, with or without the `+`."""

from __future__ import annotations

import re

import phonenumbers

# Mexico dropped the `1` after +52 from mobile numbers in 2019, and phonenumbers now calls the
# old 13-digit form impossible; WhatsApp ids (Meta's `521…`, Twilio's `whatsapp:+521…`) still
# carry it. Kept as given: the worker matches it to the 10-digit form as a national variant.
_MEXICO_OLD_MOBILE = re.compile(r"\+521\d{10}")


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
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if _MEXICO_OLD_MOBILE.fullmatch(e164):
        return e164
    if not phonenumbers.is_possible_number(number):
        return None
    return e164
