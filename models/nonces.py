"""Old webhook nonces: a provider's one-time token is kept only as long as a replay could work."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.orm import Session

from models.schema import WebhookNonce


def prune_webhook_nonces(session: Session, *, before: datetime) -> int:
    """Delete nonces first seen before `before`; returns how many.

    Across tenants by design: an upkeep sweep by age on its own index, reading nothing.
    """
    result = session.execute(delete(WebhookNonce).where(WebhookNonce.created_at < before))
    return int(getattr(result, "rowcount", 0) or 0)
