"""Durable acceptance: a webhook's messages stored in one transaction, then a drain woken.

Store, then process: once `accept` returns, the rows are committed and will be ingested even if
the broker or every worker is down (the reconciler re-sends what the queue lost). A redelivered
message (same tenant, channel and provider id) is neither stored again nor re-enqueued.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from channels.base import InboundMessage
from models.db import Database
from models.schema import Message, WebhookNonce, utcnow
from worker.dispatch import Dispatcher

log = logging.getLogger(__name__)

PROVIDER_ID_LENGTH = 300  # messages.provider_message_id
REQUEST_ID_LENGTH = 64  # messages.request_id


class AcceptUnavailableError(Exception):
    """Nothing durable answered: the webhook says 503 so the provider retries."""


class NonceReplayedError(Exception):
    """The request's one-time token was used before: a replay, refused and not stored."""


@dataclass(frozen=True)
class AcceptResult:
    new: int
    duplicates: int
    message_ids: tuple[uuid.UUID, ...] = ()  # the rows this call created


def stored_provider_id(provider_id: str) -> str:
    """The provider's id as stored: one too long for the column (a sender-chosen email
    Message-ID can be) is kept as its hash, which still deduplicates redeliveries."""
    if len(provider_id) <= PROVIDER_ID_LENGTH:
        return provider_id
    return "sha256:" + hashlib.sha256(provider_id.encode()).hexdigest()


def _insert_ignoring_conflicts(
    session: Session,
    table: Any,
    rows: list[dict[str, Any]],
    index_elements: list[str],
    returning: Any,
) -> list[Any]:
    """INSERT … ON CONFLICT DO NOTHING RETURNING, in the dialect at hand.

    On the table, not the mapped class: the ORM's bulk-insert path costs more than the insert
    itself on a webhook's hot path, and these rows are never used as objects here.
    """
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    # The rows go as parameters, not in the statement, so its compiled form is cached; SQLAlchemy
    # still sends them as one multi-row INSERT ("insertmanyvalues").
    stmt = (
        dialect.insert(table.__table__)
        .on_conflict_do_nothing(index_elements=index_elements)
        .returning(returning)
    )
    return list(session.execute(stmt, rows).scalars())


def store_messages(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    messages: Sequence[InboundMessage],
    nonce: tuple[str, str] | None = None,
    request_id: str | None = None,
) -> list[uuid.UUID]:
    """Insert the new messages as pending rows (and burn the nonce); returns the new row ids."""
    if nonce is not None:
        kind, value = nonce
        burnt = _insert_ignoring_conflicts(
            session,
            WebhookNonce,
            [{"tenant_id": tenant_id, "kind": kind, "value": value, "created_at": utcnow()}],
            ["tenant_id", "kind", "value"],
            WebhookNonce.__table__.c.value,
        )
        if not burnt:
            raise NonceReplayedError(f"{kind} token already used")
    now = utcnow()
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for message in messages:
        provider_id = stored_provider_id(message.provider_message_id)
        if (message.channel, provider_id) in rows:  # one request carrying a message twice
            continue
        payload = message.to_json()
        rows[(message.channel, provider_id)] = {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "channel": message.channel,
            "provider_message_id": provider_id,
            "body": message.text,
            "media": payload["media"],
            "payload": payload,
            "received_at": message.received_at,
            "accepted_at": now,
            "state": "pending",
            "attempts": 0,
            "request_id": request_id[:REQUEST_ID_LENGTH] if request_id else None,
        }
    if not rows:
        return []
    return _insert_ignoring_conflicts(
        session,
        Message,
        list(rows.values()),
        ["tenant_id", "channel", "provider_message_id"],
        Message.__table__.c.id,
    )


def accept(
    db: Database,
    dispatcher: Dispatcher,
    *,
    tenant_id: uuid.UUID,
    messages: Sequence[InboundMessage],
    nonce: tuple[str, str] | None = None,
    request_id: str | None = None,
) -> AcceptResult:
    """Store `messages` durably in one transaction, then wake a drain for the new ones.

    Raises NonceReplayedError (nothing stored) or AcceptUnavailableError (the database could
    not be written). A failed dispatch after the commit is logged, not raised.
    """
    try:
        with db.unit_of_work() as session:
            new_ids = store_messages(
                session, tenant_id=tenant_id, messages=messages, nonce=nonce, request_id=request_id
            )
    except NonceReplayedError:
        raise
    except IntegrityError:
        # A foreign key (the tenant) or a schema fault: the caller's bug, not an outage.
        raise
    except SQLAlchemyError as exc:
        log.warning("accept.unavailable tenant=%s error=%s", tenant_id, type(exc).__name__)
        raise AcceptUnavailableError("the message store is unavailable") from exc
    result = AcceptResult(
        new=len(new_ids), duplicates=len(messages) - len(new_ids), message_ids=tuple(new_ids)
    )
    if new_ids:
        try:
            dispatcher.dispatch(tenant_id, new_ids)
        except Exception as exc:  # the rows are committed; the reconciler will send them
            log.warning(
                "accept.dispatch_failed tenant=%s messages=%d error=%s",
                tenant_id,
                len(new_ids),
                type(exc).__name__,
            )
    return result
