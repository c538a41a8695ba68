"""Making adapter output storable: text that PostgreSQL and JSON encoders accept.

Provider payloads can carry what no database column takes: lone UTF-16 surrogates (JSON
`"\\ud800"`, or bytes the email package kept with `surrogateescape`) and NUL characters, which
PostgreSQL refuses in text. An adapter passes each message through `storable` before handing it
on, so a hostile payload is cleaned here instead of failing the worker later.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, TypeVar

from channels.base import Identity, InboundMessage, Media

_T = TypeVar("_T", InboundMessage, Media, Identity)


def clean_text(text: str) -> str:
    """Lone surrogates become U+FFFD and NULs are dropped; everything else is kept."""
    if text.isascii():
        return text.replace("\x00", "")
    # A round trip through UTF-16 pairs what can be paired and replaces the rest.
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\x00", "")


def _cleaned(item: _T) -> _T:
    changes: dict[str, Any] = {}
    for spec in fields(item):
        value = getattr(item, spec.name)
        if isinstance(value, str):
            cleaned = clean_text(value)
            if cleaned != value:
                changes[spec.name] = cleaned
    return replace(item, **changes) if changes else item


def storable(message: InboundMessage) -> InboundMessage:
    """The message with every text field, media and retired identities included, made storable."""
    cleaned = _cleaned(message)
    media = tuple(_cleaned(item) for item in cleaned.media)
    retired = tuple(_cleaned(item) for item in cleaned.retired)
    if media == cleaned.media and retired == cleaned.retired:
        return cleaned
    return replace(cleaned, media=media, retired=retired)
