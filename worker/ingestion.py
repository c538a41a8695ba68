"""The drain: a tenant's pending messages, under its lock, resolved in batches and marked handled.

Who each sender is, and what a message's attested identities link or merge, is
models.resolver's. A batch is resolved inside a savepoint; should that fail (a unique index
refused a row another writer took first, or one message is poison), the batch is redone one
message at a time, each in its own savepoint, so that only the faulty message is charged an
attempt. The unique indexes, not the tenant lock, are what finally keep one tenant from holding
two live contacts with one identity.

`ingest_batch` never commits; `drain_tenant` owns the lock and one transaction per batch.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Table, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from channels.base import InboundMessage
from models.db import Database
from models.events import ReceivedMessage, record_ingestion_events
from models.resolver import Sender, resolve_messages
from models.schema import Base, utcnow
from worker.locks import LockLostError, TenantLocks

log = logging.getLogger(__name__)

MESSAGES: Table = Base.metadata.tables["messages"]

# How often one message is re-read and redone after a unique index refused it: a race with one
# other writer settles on the first re-read; more only means something else is wrong.
RACE_RETRIES = 3
MAX_ERROR_LENGTH = 500


def sender_of(message: InboundMessage) -> Sender:
    """The resolver's view of who wrote `message`: its attested identities, in order."""
    return Sender.of(
        channel=message.channel,
        identities=[(i.kind, i.value) for i in message.identities()],
        retired=[(i.kind, i.value) for i in message.retired],
        display_name=message.display_name,
        username=message.username,
        language=message.language,
        system=message.system,
    )


@dataclass
class BatchOutcome:
    handled: int = 0
    contacts_created: int = 0
    merges: int = 0
    errors: dict[uuid.UUID, str] = field(default_factory=dict)  # message id -> error
    failed: list[uuid.UUID] = field(default_factory=list)  # errors that used the last attempt
    max_attempts_used: int = 0


def _resolve(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    rows: Sequence[Row[Any]],
    outcome: BatchOutcome,
    now: datetime,
) -> None:
    senders, inbound = [], {}
    for row in rows:
        try:
            inbound[row.id] = InboundMessage.from_json(row.payload)
            senders.append((row.id, sender_of(inbound[row.id])))
        except Exception as exc:  # a payload we cannot read is this message's fault alone
            outcome.errors[row.id] = _describe(exc)
    with session.begin_nested():
        resolved = resolve_messages(session, tenant_id=tenant_id, senders=senders, now=now)
        # In the batch's savepoint: the events go or stay with the writes they tell of.
        record_ingestion_events(
            session,
            tenant_id=tenant_id,
            created=resolved.created,
            updated=resolved.updated,
            received=[
                _received(inbound[message_id], message_id, contact_id)
                for message_id, contact_id in resolved.handled.items()
            ],
            merged=resolved.merged,
        )
    outcome.handled += len(resolved.handled)
    outcome.contacts_created += resolved.contacts_created
    outcome.merges += resolved.merges


def _received(
    message: InboundMessage, message_id: uuid.UUID, contact_id: uuid.UUID
) -> ReceivedMessage:
    return ReceivedMessage(
        message_id,
        contact_id,
        message.channel,
        message.provider_message_id,
        message.received_at,
        message.text,
    )


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_LENGTH]


def select_pending(
    session: Session, *, tenant_id: uuid.UUID, limit: int, exclude: Iterable[uuid.UUID] = ()
) -> list[Row[Any]]:
    """The tenant's oldest pending rows, locked; rows another drain holds are skipped."""
    stmt = (
        select(
            MESSAGES.c.id,
            MESSAGES.c.payload,
            MESSAGES.c.attempts,
            MESSAGES.c.channel,
            MESSAGES.c.request_id,
        )
        .where(MESSAGES.c.tenant_id == tenant_id, MESSAGES.c.state == "pending")
        .order_by(MESSAGES.c.accepted_at, MESSAGES.c.id)
        .limit(limit)
        # Two drains never take one row, even when a lock lease ran out under its holder.
        .with_for_update(skip_locked=True)
    )
    excluded = list(exclude)
    if excluded:
        stmt = stmt.where(MESSAGES.c.id.not_in(excluded))
    return list(session.execute(stmt))


def ingest_batch(
    session: Session, *, tenant_id: uuid.UUID, rows: Sequence[Row[Any]], max_attempts: int
) -> BatchOutcome:
    """Resolve each row's sender to a contact, link the row and mark it handled.

    A row that raises is charged an attempt and its error; at `max_attempts` it is parked as
    'failed'. The caller's unit of work commits.
    """
    outcome = BatchOutcome()
    if not rows:
        return outcome
    now = utcnow()
    try:
        _resolve(session, tenant_id=tenant_id, rows=rows, outcome=outcome, now=now)
    except Exception as exc:  # redone row by row below, so only the faulty row is charged
        log.info(
            "ingest.batch_conflict",
            extra={"tenant_id": str(tenant_id), "rows": len(rows), "error": type(exc).__name__},
        )
        outcome = BatchOutcome()
        for row in rows:
            _ingest_one(session, tenant_id=tenant_id, row=row, outcome=outcome, now=now)
    _record_errors(
        session, tenant_id=tenant_id, rows=rows, outcome=outcome, max_attempts=max_attempts
    )
    return outcome


def _ingest_one(
    session: Session, *, tenant_id: uuid.UUID, row: Row[Any], outcome: BatchOutcome, now: datetime
) -> None:
    for attempt in range(1, RACE_RETRIES + 1):
        single = BatchOutcome()
        try:
            _resolve(session, tenant_id=tenant_id, rows=[row], outcome=single, now=now)
        except IntegrityError as exc:
            # Another writer took one of this sender's identities first: re-read and redo.
            if attempt == RACE_RETRIES:
                outcome.errors[row.id] = _describe(exc)
            continue
        except Exception as exc:  # poison: charged to this message, which is kept
            outcome.errors[row.id] = _describe(exc)
            return
        outcome.errors.update(single.errors)
        outcome.handled += single.handled
        outcome.contacts_created += single.contacts_created
        outcome.merges += single.merges
        return


def _record_errors(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    rows: Sequence[Row[Any]],
    outcome: BatchOutcome,
    max_attempts: int,
) -> None:
    if not outcome.errors:
        return
    attempts = {row.id: row.attempts for row in rows}
    request_ids = {row.id: row.request_id for row in rows}
    params = []
    for message_id, error in outcome.errors.items():
        used = attempts[message_id] + 1
        outcome.max_attempts_used = max(outcome.max_attempts_used, used)
        if used >= max_attempts:
            outcome.failed.append(message_id)
        params.append(
            {
                "b_id": message_id,
                "b_error": error,
                "b_state": "failed" if used >= max_attempts else "pending",
            }
        )
        log.warning(
            "ingest.message_error",
            extra={
                "tenant_id": str(tenant_id),
                "message_id": str(message_id),
                "attempt": used,
                "error": error,
                "request_id": request_ids[message_id],
            },
        )
    session.execute(
        update(MESSAGES)
        .where(MESSAGES.c.id == bindparam("b_id"), MESSAGES.c.tenant_id == tenant_id)
        .values(
            attempts=MESSAGES.c.attempts + 1,
            last_error=bindparam("b_error"),
            state=bindparam("b_state"),
        ),
        params,
    )


def _log_handled(tenant_id: uuid.UUID, rows: Sequence[Row[Any]], outcome: BatchOutcome) -> None:
    """One line a message, after its batch committed, carrying the request id of the webhook
    that delivered it: an operator follows one message from the provider's call to its contact.
    """
    for row in rows:
        if row.id not in outcome.errors:
            log.info(
                "ingest.message_handled",
                extra={
                    "tenant_id": str(tenant_id),
                    "message_id": str(row.id),
                    "channel": row.channel,
                    "request_id": row.request_id,
                },
            )


@dataclass
class DrainResult:
    handled: int = 0
    contacts_created: int = 0
    failed: int = 0
    retrying: dict[uuid.UUID, int] = field(default_factory=dict)  # message id -> attempts used
    lost_lock: bool = False
    out_of_time: bool = False


def drain_tenant(
    db: Database,
    locks: TenantLocks,
    *,
    tenant_id: uuid.UUID,
    batch_size: int,
    max_attempts: int,
    budget_seconds: float,
) -> DrainResult:
    """Under the tenant's lock, ingest its pending rows, one transaction per batch, until none
    are left, the lease is lost, or `budget_seconds` ran out (the caller then drains again).

    Rows that erred but have attempts left are skipped for the rest of this drain and reported
    in `retrying`, so one poison message cannot spin a drain.
    """
    result = DrainResult()
    deadline = time.monotonic() + budget_seconds
    with locks.hold(tenant_id) as lease:
        while True:
            with db.unit_of_work() as session:
                rows = select_pending(
                    session, tenant_id=tenant_id, limit=batch_size, exclude=result.retrying
                )
                if not rows:
                    break
                outcome = ingest_batch(
                    session, tenant_id=tenant_id, rows=rows, max_attempts=max_attempts
                )
            _log_handled(tenant_id, rows, outcome)
            result.handled += outcome.handled
            result.contacts_created += outcome.contacts_created
            result.failed += len(outcome.failed)
            attempts = {row.id: row.attempts + 1 for row in rows}
            for message_id in outcome.errors:
                if message_id not in outcome.failed:
                    result.retrying[message_id] = attempts[message_id]
            if len(rows) < batch_size:
                # A short batch took every pending row visible when it read. A row committed
                # since has its own wake-up coming (the flag was cleared before we read, or,
                # without Redis, each accept sends one), so a further read would find nothing.
                break
            try:
                lease.extend()
            except LockLostError:
                result.lost_lock = True
                break
            if time.monotonic() >= deadline:
                result.out_of_time = True
                break
    return result
