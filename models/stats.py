"""Pipeline figures for operators, read from the database so they hold across processes.

These are the one deliberate exception to tenant scoping: an operator's totals over all
tenants, never returned to a tenant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from models.schema import Contact, ContactMerge, Message, utcnow
from models.webhook_endpoints import delivery_stats
from models.whatsapp_routing import count_unrouted

INBOUND_SOURCES = ("whatsapp", "telegram", "sms", "email")


@dataclass(frozen=True)
class PipelineStats:
    messages: dict[tuple[str, str], int] = field(default_factory=dict)  # (channel, state) -> n
    contacts_by_source: dict[str, int] = field(default_factory=dict)
    merges_by_how: dict[str, int] = field(default_factory=dict)  # "api" or "attested" -> n
    pending: int = 0
    oldest_pending_age_seconds: float = 0.0
    unrouted_changes: int = 0  # shared-route WhatsApp changes no tenant has registered yet
    delivery_attempts: dict[str, int] = field(default_factory=dict)  # outcome -> n
    deliveries: dict[str, int] = field(default_factory=dict)  # state -> n


def pipeline_stats(session: Session, *, now: datetime | None = None) -> PipelineStats:
    now = now or utcnow()
    messages = {
        (channel, state): count
        for channel, state, count in session.execute(
            select(Message.channel, Message.state, func.count()).group_by(
                Message.channel, Message.state
            )
        )
    }
    contacts: dict[str, int] = dict(
        session.execute(
            select(Contact.source, func.count())
            .where(Contact.source.in_(INBOUND_SOURCES))
            .group_by(Contact.source)
        ).all()
    )
    how = case((ContactMerge.reason == "api", "api"), else_="attested")
    merges: dict[str, int] = dict(
        session.execute(select(how, func.count()).select_from(ContactMerge).group_by(how)).all()
    )
    oldest = session.scalar(
        select(Message.accepted_at)
        .where(Message.state == "pending")
        .order_by(Message.accepted_at)
        .limit(1)
    )
    pending = sum(n for (_, state), n in messages.items() if state == "pending")
    age = max((now - oldest).total_seconds(), 0.0) if oldest else 0.0
    attempts, deliveries = delivery_stats(session)
    return PipelineStats(
        messages=messages,
        contacts_by_source=contacts,
        merges_by_how=merges,
        pending=pending,
        oldest_pending_age_seconds=age,
        unrouted_changes=count_unrouted(session),
        delivery_attempts=attempts,
        deliveries=deliveries,
    )
