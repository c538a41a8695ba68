"""Building inbound messages and running the ingestion service directly, without Celery."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from channels.base import InboundMessage
from models.db import Database
from models.schema import Contact, ContactIdentity, Message
from worker.accept import store_messages
from worker.ingestion import DrainResult, drain_tenant
from worker.locks import LocalTenantLocks


def inbound(channel: str = "sms", **fields: Any) -> InboundMessage:
    fields.setdefault("provider_message_id", uuid.uuid4().hex)
    fields.setdefault("received_at", datetime.now(UTC))
    fields.setdefault("text", "Is the flat on Elm Street still available?")
    return InboundMessage(channel=channel, **fields)  # type: ignore[arg-type]


def store(db: Database, tenant_id: uuid.UUID, *messages: InboundMessage) -> list[uuid.UUID]:
    with db.unit_of_work() as session:
        return store_messages(session, tenant_id=tenant_id, messages=messages)


def drain(
    db: Database, tenant_id: uuid.UUID, *, max_attempts: int = 5, batch_size: int = 200
) -> DrainResult:
    return drain_tenant(
        db,
        LocalTenantLocks(wait_seconds=5),
        tenant_id=tenant_id,
        batch_size=batch_size,
        max_attempts=max_attempts,
        budget_seconds=60,
    )


def ingest(db: Database, tenant_id: uuid.UUID, *messages: InboundMessage) -> DrainResult:
    store(db, tenant_id, *messages)
    return drain(db, tenant_id)


def live_contacts(db: Database, tenant_id: uuid.UUID) -> list[Contact]:
    with db.sessions() as session:
        return list(
            session.scalars(
                select(Contact)
                .where(
                    Contact.tenant_id == tenant_id,
                    Contact.deleted_at.is_(None),
                    Contact.merged_into_id.is_(None),
                )
                .order_by(Contact.created_at, Contact.id)
            )
        )


def message_rows(db: Database, tenant_id: uuid.UUID) -> list[Message]:
    with db.sessions() as session:
        return list(session.scalars(select(Message).where(Message.tenant_id == tenant_id)))


def identity_count(db: Database, tenant_id: uuid.UUID) -> int:
    """The tenant's active identities (retired ones are history, not counted)."""
    with db.sessions() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(ContactIdentity)
                .where(ContactIdentity.tenant_id == tenant_id, ContactIdentity.retired_at.is_(None))
            )
            or 0
        )
