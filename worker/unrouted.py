"""Shared-route WhatsApp changes for a number no tenant had registered: listing them for an
operator and, once a tenant has registered the number, routing them into its inbox.

A routed change is stored exactly as the shared route would have stored it (the same
messages, deduplicated by their wamid), marked routed and no longer listed.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from channels.base import ChannelError
from channels.whatsapp import parse_notification
from channels.whatsapp_shared import Change, notification_of
from intake.settings import Settings
from models.db import Database
from models.schema import UnroutedWhatsAppChange
from models.whatsapp_routing import (
    lock_unrouted_changes,
    mark_routed,
    tenant_of_phone_number_id,
    unrouted_changes,
)
from worker.accept import store_messages
from worker.dispatch import Dispatcher, make_dispatcher


class UnroutableChangeError(LookupError):
    """An unrouted change that cannot be routed (yet); the text is one line."""


@dataclass(frozen=True)
class UnroutedEvent:
    """An unrouted change as an operator sees it: never its messages."""

    id: uuid.UUID
    phone_number_id: str
    received_at: datetime
    message_count: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "phone_number_id": self.phone_number_id,
            "received_at": self.received_at.isoformat(),
            "message_count": self.message_count,
        }

    def line(self) -> str:
        return (
            f"{self.id} phone_number_id={self.phone_number_id} "
            f"received={self.received_at.isoformat(timespec='seconds')} "
            f"messages={self.message_count}"
        )


def list_unrouted(db: Database) -> list[UnroutedEvent]:
    """Changes still waiting for a tenant, oldest first."""
    with db.sessions() as session:
        return [
            UnroutedEvent(c.id, c.phone_number_id, c.received_at, c.message_count)
            for c in unrouted_changes(session)
        ]


def unrouted_ids_among(db: Database, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `ids` name unrouted changes (routed since or not), not failed messages."""
    if not ids:
        return set()
    with db.sessions() as session:
        return set(
            session.scalars(
                select(UnroutedWhatsAppChange.id).where(UnroutedWhatsAppChange.id.in_(list(ids)))
            )
        )


def _route(change: UnroutedWhatsAppChange, tenant_id: uuid.UUID | None) -> uuid.UUID:
    if change.routed_at is not None:
        raise UnroutableChangeError(
            f"unrouted change {change.id} was already replayed to tenant {change.routed_tenant_id}"
        )
    if tenant_id is None:
        raise UnroutableChangeError(
            f"unrouted change {change.id}: no tenant has registered phone_number_id "
            f"{change.phone_number_id} yet (intake tenant configure TENANT_ID "
            f"whatsapp_phone_number_id={change.phone_number_id})"
        )
    return tenant_id


def check_unrouted(db: Database, *, change_ids: Sequence[uuid.UUID]) -> None:
    """Raise UnroutableChangeError unless every change could be routed now; changes nothing."""
    with db.sessions() as session:
        for change in lock_unrouted_changes(session, change_ids=change_ids):
            _route(
                change,
                tenant_of_phone_number_id(session, phone_number_id=change.phone_number_id),
            )


def replay_unrouted(
    db: Database,
    settings: Settings,
    *,
    change_ids: Sequence[uuid.UUID],
    dispatcher: Dispatcher | None = None,
) -> int:
    """Route the changes to the tenants that registered their numbers; returns the messages
    newly stored. All or nothing: an unknown, routed or still unroutable change raises
    UnroutableChangeError and changes nothing."""
    wanted = list(dict.fromkeys(change_ids))
    woken: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    with db.unit_of_work() as session:
        found = {c.id: c for c in lock_unrouted_changes(session, change_ids=wanted)}
        for change_id in wanted:
            change = found.get(change_id)
            if change is None:
                raise UnroutableChangeError(f"no unrouted change with id {change_id}")
            tenant_id = _route(
                change,
                tenant_of_phone_number_id(session, phone_number_id=change.phone_number_id),
            )
            try:
                parsed = parse_notification(
                    notification_of(
                        [Change(change.phone_number_id, change.entry_id, change.change)]
                    )
                )
            except ChannelError as exc:
                raise UnroutableChangeError(f"unrouted change {change.id}: {exc}") from None
            woken[tenant_id] += store_messages(
                session, tenant_id=tenant_id, messages=parsed.messages
            )
            mark_routed(session, change=change, tenant_id=tenant_id)
    if dispatcher is None:
        dispatcher = make_dispatcher(settings)
    for tenant_id, ids in woken.items():
        if ids:
            dispatcher.dispatch_now(tenant_id)
    return sum(len(ids) for ids in woken.values())
