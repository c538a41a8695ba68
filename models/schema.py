"""The tables. Every row of a tenant carries `tenant_id`, and every query starts from it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    Uuid,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware in UTC, on SQLite too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        if value is not None and dialect.name == "sqlite":
            # SQLite keeps text: store UTC without an offset so that text order is time order.
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


LIVE = text("deleted_at IS NULL")
PENDING = text("state = 'pending'")
ACTIVE = text("retired_at IS NULL")


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    region: Mapped[str] = mapped_column(String(2), default="US")
    max_page_size: Mapped[int] = mapped_column(Integer, default=100)
    # Channel secrets are kept as given: an HMAC needs the secret itself, so it cannot be hashed.
    secrets: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Secrets replaced with an overlap: {name: {"value": …, "expires_at": ISO 8601}}.
    previous_secrets: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # `events_include_body=1`: message.received events carry the message text.
    events_include_body: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    # SHA-256 of the key: keys are 256 random bits, so a fast hash is enough and lookups stay O(1).
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(100), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(300))
    email: Mapped[str | None] = mapped_column(String(320), default=None)
    phone: Mapped[str | None] = mapped_column(String(20), default=None)
    status: Mapped[str] = mapped_column(String(20), default="prospect")
    role: Mapped[str] = mapped_column(String(20), default="prospect")
    channel_preference: Mapped[str | None] = mapped_column(String(20), default=None)
    source: Mapped[str] = mapped_column(String(100), default="api")
    referral_source: Mapped[str | None] = mapped_column(String(300), default=None)
    language: Mapped[str] = mapped_column(String(2), default="en")
    applied_at: Mapped[datetime | None] = mapped_column(default=None)
    notes: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    # A merged contact is kept, out of every list, pointing at the contact that absorbed it.
    merged_into_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("contacts.id"), default=None
    )
    merged_at: Mapped[datetime | None] = mapped_column(default=None)

    # Phone and email uniqueness lives on contact_identities: the primary phone and email are
    # identities too, and that table's unique index is the one judge.
    __table_args__ = (
        Index(
            "ix_contacts_tenant_created",
            "tenant_id",
            "created_at",
            "id",
            postgresql_where=LIVE,
            sqlite_where=LIVE,
        ),
        Index(
            "ix_contacts_tenant_status_created",
            "tenant_id",
            "status",
            "created_at",
            postgresql_where=LIVE,
            sqlite_where=LIVE,
        ),
        Index(
            "ix_contacts_tenant_role_created",
            "tenant_id",
            "role",
            "created_at",
            postgresql_where=LIVE,
            sqlite_where=LIVE,
        ),
        Index(
            "ix_contacts_tenant_channel_created",
            "tenant_id",
            "channel_preference",
            "created_at",
            postgresql_where=LIVE,
            sqlite_where=LIVE,
        ),
    )


class ContactIdentity(Base):
    """One way a person is known (`phone`, `email`, `whatsapp`, `whatsapp_bsuid`, `telegram`).

    An active identity (not retired) names one contact; retiring it keeps the contact's history
    while freeing the value, which is what a soft delete and a changed number do.
    """

    __tablename__ = "contact_identities"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    contact_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contacts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    value: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        # The database refuses one identity on two contacts of a tenant: the judge of every race.
        Index(
            "uq_contact_identities_active",
            "tenant_id",
            "kind",
            "value",
            unique=True,
            postgresql_where=ACTIVE,
            sqlite_where=ACTIVE,
        ),
    )


class ContactMerge(Base):
    """One contact absorbed by another: why, what moved, and what the survivor kept or gained.

    `identity_ids` and `message_ids` are what moved, so an undo can move exactly those back;
    `kept` holds the merged contact's values that the survivor overrode, `gained` the
    survivor's fields it took from the merged contact (field -> value taken).
    """

    __tablename__ = "contact_merges"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    survivor_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contacts.id"))
    merged_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contacts.id"))
    reason: Mapped[str] = mapped_column(String(200))
    identity_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    message_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    kept: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    gained: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    undone_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        Index("ix_contact_merges_survivor", "tenant_id", "survivor_id", "created_at"),
        Index("ix_contact_merges_merged", "tenant_id", "merged_id"),
    )


class Message(Base):
    """An inbound message: stored when a webhook accepts it, then handled by the worker."""

    __tablename__ = "messages"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    channel: Mapped[str] = mapped_column(String(20))
    provider_message_id: Mapped[str] = mapped_column(String(300))
    contact_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("contacts.id"), default=None)
    body: Mapped[str | None] = mapped_column(Text, default=None)
    media: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # The normalized InboundMessage as JSON: what the worker ingests and a replay re-reads.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    accepted_at: Mapped[datetime] = mapped_column(default=utcnow)
    state: Mapped[str] = mapped_column(String(10), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    handled_at: Mapped[datetime | None] = mapped_column(default=None)
    request_id: Mapped[str | None] = mapped_column(String(64), default=None)

    __table_args__ = (
        Index(
            "uq_messages_provider_id", "tenant_id", "channel", "provider_message_id", unique=True
        ),
        Index("ix_messages_contact_received", "tenant_id", "contact_id", "received_at"),
        # Small: only unhandled rows, which the worker drains and the reconciler sweeps.
        Index(
            "ix_messages_pending",
            "tenant_id",
            "accepted_at",
            postgresql_where=PENDING,
            sqlite_where=PENDING,
        ),
        Index("ix_messages_state", "state", "accepted_at"),
    )


class IdempotencyKey(Base):
    """A create request's Idempotency-Key, its body's hash and, when done, the response."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    response_status: Mapped[int | None] = mapped_column(Integer, default=None)
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class WebhookNonce(Base):
    """A provider token seen once (Mailgun's `token`): seen again, the request is a replay."""

    __tablename__ = "webhook_nonces"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    value: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class WhatsAppPhoneNumber(Base):
    """A Meta `phone_number_id` a tenant registered: the shared WhatsApp route's address book."""

    __tablename__ = "whatsapp_phone_numbers"

    # The primary key is the lookup the shared route makes, and makes a number one tenant's.
    phone_number_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UnroutedWhatsAppChange(Base):
    """A shared-route change for a number no tenant had registered, kept until it is replayed.

    It has no tenant until one registers the number: an operator's row, like the spool.
    """

    __tablename__ = "unrouted_whatsapp_changes"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    phone_number_id: Mapped[str] = mapped_column(String(64), index=True)
    entry_id: Mapped[str | None] = mapped_column(String(64), default=None)  # the WABA id
    change: Mapped[dict[str, Any]] = mapped_column(JSON)  # as Meta sent it
    # SHA-256 of the change as sent: Meta's redelivery of the same notification is stored once.
    change_key: Mapped[str] = mapped_column(String(64))
    message_count: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    routed_at: Mapped[datetime | None] = mapped_column(default=None)
    routed_tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id"), default=None
    )

    __table_args__ = (
        Index("uq_unrouted_whatsapp_changes_key", "change_key", unique=True),
        Index("ix_unrouted_whatsapp_changes_received", "received_at"),
    )


class Event(Base):
    """A change as the tenant's feed and webhooks tell it, written in the change's transaction."""

    __tablename__ = "events"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    sequence: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (
        Index("uq_events_tenant_sequence", "tenant_id", "sequence", unique=True),
        Index("ix_events_created", "created_at"),
    )


class EventCounter(Base):
    """A tenant's last event sequence; its row lock orders the tenant's event writers."""

    __tablename__ = "event_counters"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    last_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    # The highest sequence that retention removed: a cursor below it has expired.
    pruned_through: Mapped[int] = mapped_column(BigInteger, default=0)


class WebhookEndpoint(Base):
    """A tenant's URL that receives its events, signed per Standard Webhooks."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    url: Mapped[str] = mapped_column(String(2000))
    event_types: Mapped[list[str]] = mapped_column(JSON, default=list)  # empty: every type
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Kept as given, like channel secrets: signing needs the secret itself.
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100), default=None)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    # Events up to this sequence have their deliveries made (the fan-out's cursor).
    cursor: Mapped[int] = mapped_column(BigInteger, default=0)
    # One delivery round at a time per endpoint keeps its deliveries in sequence order.
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    failing_since: Mapped[datetime | None] = mapped_column(default=None)
    disabled_reason: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_webhook_endpoints_tenant", "tenant_id", "created_at"),)


class WebhookDelivery(Base):
    """One event owed to one endpoint: pending until an attempt succeeds or retries run out."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    sequence: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(10), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        Index("uq_webhook_deliveries_event", "endpoint_id", "event_id", unique=True),
        Index("ix_webhook_deliveries_queue", "endpoint_id", "state", "sequence"),
        Index("ix_webhook_deliveries_event", "event_id"),
    )


class WebhookAttempt(Base):
    """One HTTP request of a delivery: its status (or error) and latency."""

    __tablename__ = "webhook_attempts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
    outcome: Mapped[str] = mapped_column(String(20))
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(String(500), default=None)
    latency_ms: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "attempted_at"),)
