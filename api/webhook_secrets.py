"""Verifying a webhook with the tenant's current secret, or during an overlap the one it replaced.

`intake tenant configure … --keep-previous 24h` keeps a replaced secret valid for a while, so a
provider (or the tenant's own relay) still signing with the old one is not refused while its
configuration catches up. The current secret is always tried first; the previous one only
after a signature failure, so a rotation costs nothing to requests signed with the new one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from channels.base import ChannelAdapter, InvalidSignatureError, Parsed, RawRequest
from models.tenants import ChannelSecrets

SecretUsed = Literal["current", "previous"]


def parse_verified(
    adapter: ChannelAdapter, raw: RawRequest, secrets: ChannelSecrets, now: datetime
) -> tuple[Parsed, SecretUsed]:
    """The parsed request and which secret verified it; raises the adapter's ChannelError."""
    try:
        return adapter.parse(raw, secrets.current, now), "current"
    except InvalidSignatureError:
        with_previous = secrets.previous_at(now)
        if with_previous is None:
            raise
        # A failure here is as much a refusal as the first one: re-raised as the adapter's.
        return adapter.parse(raw, with_previous, now), "previous"
