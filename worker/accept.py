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
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import (
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
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


def _insert_ignoring_conflicts_rows(
    session: Session,
    table: Any,
    rows: list[dict[str, Any]],
    index_elements: list[str],
    returning: tuple[Any, ...],
) -> list[Any]:
    """INSERT … ON CONFLICT DO NOTHING RETURNING `returning`, in the dialect at hand.

    On the table, not the mapped class: the ORM's bulk-insert path costs more than the insert
    itself on a webhook's hot path, and these rows are never used as objects here.
    """
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    # The rows go as parameters, not in the statement, so its compiled form is cached; SQLAlchemy
    # still sends them as one multi-row INSERT ("insertmanyvalues").
    stmt = (
        dialect.insert(table.__table__)
        .on_conflict_do_nothing(index_elements=index_elements)
        .returning(*returning)
    )
    return list(session.execute(stmt, rows).all())


def _insert_ignoring_conflicts(
    session: Session,
    table: Any,
    rows: list[dict[str, Any]],
    index_elements: list[str],
    returning: Any,
) -> list[Any]:
    """The same, returning one column's values."""
    found = _insert_ignoring_conflicts_rows(session, table, rows, index_elements, (returning,))
    return [row[0] for row in found]


def _message_rows(
    *,
    tenant_id: uuid.UUID,
    messages: Sequence[InboundMessage],
    request_id: str | None,
    now: datetime,
) -> dict[tuple[str, str], dict[str, Any]]:
    """The rows for `messages`, keyed by (channel, stored provider id): a repeat appears once."""
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
    return rows


def store_messages(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    messages: Sequence[InboundMessage],
    nonce: tuple[str, str] | None = None,
    request_id: str | None = None,
) -> list[uuid.UUID]:
    """Insert the new messages as pending rows (and burn the nonce); returns the new row ids."""
    [stored] = store_batch(
        session, requests=[AcceptRequest(tenant_id, messages, nonce, request_id)]
    )
    if isinstance(stored, NonceReplayedError):
        raise stored
    return stored


@dataclass(frozen=True)
class AcceptRequest:
    """One webhook's messages (and one-time token), waiting to be stored with others."""

    tenant_id: uuid.UUID
    messages: Sequence[InboundMessage]
    nonce: tuple[str, str] | None = None
    request_id: str | None = None


def store_batch(
    session: Session, *, requests: Sequence[AcceptRequest]
) -> list[list[uuid.UUID] | NonceReplayedError]:
    """`store_messages` for many requests (of any tenants) in one statement per table.

    Returns, for each request in order, its new row ids, or NonceReplayedError when its token
    was used before (by an earlier request or earlier in this batch): such a request stores
    nothing. A message that two requests of the batch carry belongs to the first one.
    """
    now = utcnow()
    nonce_owner: dict[tuple[uuid.UUID, str, str], int] = {}  # a token belongs to its first user
    replayed: set[int] = set()
    for i, request in enumerate(requests):
        if request.nonce is not None:
            key = (request.tenant_id, request.nonce[0], request.nonce[1])
            if key in nonce_owner:
                replayed.add(i)
            else:
                nonce_owner[key] = i
    if nonce_owner:
        table = WebhookNonce.__table__
        burnt = _insert_ignoring_conflicts_rows(
            session,
            WebhookNonce,
            [
                {"tenant_id": tenant_id, "kind": kind, "value": value, "created_at": now}
                for tenant_id, kind, value in nonce_owner
            ],
            ["tenant_id", "kind", "value"],
            (table.c.tenant_id, table.c.kind, table.c.value),
        )
        burnt_keys = {(row.tenant_id, row.kind, row.value) for row in burnt}
        replayed |= {i for key, i in nonce_owner.items() if key not in burnt_keys}
    owner: dict[uuid.UUID, int] = {}  # row id -> index of its request
    rows: dict[tuple[uuid.UUID, str, str], dict[str, Any]] = {}
    for i, request in enumerate(requests):
        if i in replayed:
            continue
        own = _message_rows(
            tenant_id=request.tenant_id,
            messages=request.messages,
            request_id=request.request_id,
            now=now,
        )
        for (channel, provider_id), row in own.items():
            key = (request.tenant_id, channel, provider_id)
            if key not in rows:
                rows[key] = row
                owner[row["id"]] = i
    # A microsecond apart in arrival order: drains take the oldest first, ordered by
    # accepted_at then id, and a random id must not reorder one request's messages (a WhatsApp
    # POST carrying several) or the requests of one group commit.
    for n, row in enumerate(rows.values()):
        row["accepted_at"] = now + timedelta(microseconds=n)
    new_ids: list[list[uuid.UUID]] = [[] for _ in requests]
    if rows:
        for row_id in _insert_ignoring_conflicts(
            session,
            Message,
            list(rows.values()),
            ["tenant_id", "channel", "provider_message_id"],
            Message.__table__.c.id,
        ):
            new_ids[owner[row_id]].append(row_id)
    return [
        NonceReplayedError(f"{r.nonce[0]} token already used")
        if i in replayed and r.nonce
        else new_ids[i]
        for i, r in enumerate(requests)
    ]


# Errors that say the database is not there, rather than that something in the batch is wrong:
# retrying each request alone would only wait for the same outage once per request.
_UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError)


def _unavailable(exc: Exception, *, tenant_id: uuid.UUID | None = None) -> AcceptUnavailableError:
    log.warning(
        "accept.unavailable", extra={"tenant_id": str(tenant_id), "error": type(exc).__name__}
    )
    error = AcceptUnavailableError("the message store is unavailable")
    error.__cause__ = exc
    return error


def _store_alone(db: Database, request: AcceptRequest) -> list[uuid.UUID]:
    """One request in its own transaction; raises what `accept` documents."""
    try:
        with db.unit_of_work() as session:
            return store_messages(
                session,
                tenant_id=request.tenant_id,
                messages=request.messages,
                nonce=request.nonce,
                request_id=request.request_id,
            )
    except NonceReplayedError:
        raise
    except IntegrityError:
        # A foreign key (the tenant) or a schema fault: the caller's bug, not an outage.
        raise
    except SQLAlchemyError as exc:
        raise _unavailable(exc, tenant_id=request.tenant_id) from exc


def wake(dispatcher: Dispatcher, tenant_id: uuid.UUID, *, messages: int) -> None:
    """Wake a drain for committed rows; a failure is logged and left to the reconciler."""
    try:
        dispatcher.dispatch(tenant_id)
    except Exception as exc:  # the rows are committed; the reconciler will send them
        log.warning(
            "accept.dispatch_failed",
            extra={
                "tenant_id": str(tenant_id),
                "messages": messages,
                "error": type(exc).__name__,
            },
        )


def _result(request: AcceptRequest, new_ids: Sequence[uuid.UUID]) -> AcceptResult:
    return AcceptResult(
        new=len(new_ids),
        duplicates=len(request.messages) - len(new_ids),
        message_ids=tuple(new_ids),
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
    request = AcceptRequest(tenant_id, messages, nonce, request_id)
    new_ids = _store_alone(db, request)
    if new_ids:
        wake(dispatcher, tenant_id, messages=len(new_ids))
    return _result(request, new_ids)


def accept_batch(
    db: Database, dispatcher: Dispatcher, *, requests: Sequence[AcceptRequest]
) -> list[AcceptResult | Exception]:
    """`accept` for many requests in one transaction: each request's outcome, in order.

    An outcome is an AcceptResult or the exception `accept` would have raised for that request
    alone. The database unreachable fails them all with AcceptUnavailableError; any other error
    retries each request in a transaction of its own, so one bad request cannot fail the rest.
    Each tenant with new rows is woken once, after the commit.
    """
    outcomes, woken = store_accepted(db, dispatcher, requests=requests)
    for tenant_id, new_ids in woken.items():
        wake(dispatcher, tenant_id, messages=len(new_ids))
    return outcomes


def store_accepted(
    db: Database, dispatcher: Dispatcher, *, requests: Sequence[AcceptRequest]
) -> tuple[list[AcceptResult | Exception], dict[uuid.UUID, list[uuid.UUID]]]:
    """`accept_batch` without its wake-ups: the outcomes, and the new row ids by tenant that
    the caller must wake (after answering, so that a slow broker never delays a 2xx).

    """
    outcomes: list[AcceptResult | Exception] = []
    woken: dict[uuid.UUID, list[uuid.UUID]] = {}
    try:
        with db.unit_of_work() as session:
            stored = store_batch(session, requests=requests)
    except _UNAVAILABLE as exc:
        return [_unavailable(exc, tenant_id=r.tenant_id) for r in requests], {}
    except Exception as exc:
        log.warning(
            "accept.batch_failed",
            extra={"requests": len(requests), "error": type(exc).__name__},
        )
        for request in requests:  # each alone, so that one bad request cannot fail the rest
            try:
                alone_ids = _store_alone(db, request)
            except Exception as alone:  # handed to that request's caller, not raised here
                outcomes.append(alone)
                continue
            outcomes.append(_result(request, alone_ids))
            if alone_ids:
                woken.setdefault(request.tenant_id, []).extend(alone_ids)
        return outcomes, woken
    for request, new_ids in zip(requests, stored, strict=True):
        if isinstance(new_ids, NonceReplayedError):
            outcomes.append(new_ids)
            continue
        outcomes.append(_result(request, new_ids))
        if new_ids:
            woken.setdefault(request.tenant_id, []).extend(new_ids)
    return outcomes, woken
