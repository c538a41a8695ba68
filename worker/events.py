"""Failed inbound messages: listing them for an operator and putting them back on the queue."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from intake.settings import Settings
from models.db import Database
from models.schema import Message
from worker.dispatch import Dispatcher, make_dispatcher


class UnknownEventError(LookupError):
    """An id that names no failed message; the text is one line, fit for the command line."""


@dataclass(frozen=True)
class FailedEvent:
    """A failed message as an operator sees it: never its body."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    channel: str
    provider_message_id: str
    attempts: int
    last_error: str | None
    accepted_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "tenant_id": str(self.tenant_id),
            "channel": self.channel,
            "provider_message_id": self.provider_message_id,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "accepted_at": self.accepted_at.isoformat(),
        }

    def line(self) -> str:
        error = (self.last_error or "").replace("\n", " ")
        return (
            f"{self.id} tenant={self.tenant_id} channel={self.channel} "
            f"provider_id={self.provider_message_id} attempts={self.attempts} "
            f"accepted={self.accepted_at.isoformat(timespec='seconds')} error={error}"
        )


def list_failed(db: Database, *, tenant_id: uuid.UUID | None) -> list[FailedEvent]:
    """Failed messages, oldest first: of one tenant, or of all when `tenant_id` is None."""
    stmt = (
        select(
            Message.id,
            Message.tenant_id,
            Message.channel,
            Message.provider_message_id,
            Message.attempts,
            Message.last_error,
            Message.accepted_at,
        )
        .where(Message.state == "failed")
        .order_by(Message.accepted_at, Message.id)
    )
    if tenant_id is not None:
        stmt = stmt.where(Message.tenant_id == tenant_id)
    with db.sessions() as session:
        return [FailedEvent(*row) for row in session.execute(stmt)]


def replay(
    db: Database,
    settings: Settings,
    *,
    message_ids: Sequence[uuid.UUID],
    dispatcher: Dispatcher | None = None,
) -> int:
    """Put failed messages back to pending with fresh attempts and wake their drains.

    All or nothing: an id that is unknown or not failed raises UnknownEventError and changes
    nothing. Returns how many messages were replayed.
    """
    wanted = list(dict.fromkeys(message_ids))
    if not wanted:
        return 0
    with db.unit_of_work() as session:
        rows = session.execute(
            select(Message.id, Message.tenant_id)
            .where(Message.id.in_(wanted), Message.state == "failed")
            .with_for_update()
        ).all()
        found: dict[uuid.UUID, uuid.UUID] = {row.id: row.tenant_id for row in rows}
        for message_id in wanted:
            if message_id not in found:
                raise UnknownEventError(f"no failed message with id {message_id}")
        by_tenant: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
        for message_id in wanted:
            by_tenant[found[message_id]].append(message_id)
        for tenant_id, ids in by_tenant.items():
            session.execute(
                update(Message)
                .where(
                    Message.tenant_id == tenant_id, Message.id.in_(ids), Message.state == "failed"
                )
                .values(state="pending", attempts=0)
            )
    if dispatcher is None:
        dispatcher = make_dispatcher(settings)
    for tenant_id in by_tenant:
        dispatcher.dispatch_now(tenant_id)
    return len(wanted)
