"""Reading a tenant's events back, straight from the table."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from models.db import Database
from models.schema import Event


def events_of(db: Database, tenant_id: uuid.UUID) -> list[Event]:
    with db.sessions() as session:
        return list(
            session.scalars(
                select(Event).where(Event.tenant_id == tenant_id).order_by(Event.sequence)
            )
        )


def types_of(db: Database, tenant_id: uuid.UUID) -> list[str]:
    return [event.type for event in events_of(db, tenant_id)]
