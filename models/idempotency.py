"""Idempotency-Key for creates: claim a key, run the request once, replay its response.

A key is claimed with an in-flight marker committed in its own short transaction, so a
concurrent request with the same key sees it and gets a 409 instead of running twice. The
successful response is stored in the same transaction as the work it reports; an error response
is stored afterwards. Keys are per tenant and live 24 hours; an in-flight marker older than a
minute belongs to a request that died, and the next request with the key takes it over.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.db import Database
from models.schema import IdempotencyKey, utcnow

KEY_TTL = timedelta(hours=24)
ABANDONED_AFTER = timedelta(seconds=60)
MAX_KEY_LENGTH = 255


class IdempotencyError(Exception):
    pass


class IdempotencyKeyInFlightError(IdempotencyError):
    """A request with this key is still running."""


class IdempotencyKeyReusedError(IdempotencyError):
    """The key was first used with a different request body."""


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: dict[str, Any] | None


def request_fingerprint(payload: Any) -> str:
    """A hash of the request's JSON that ignores key order and whitespace."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def claim_idempotency_key(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    key: str,
    request_hash: str,
    now: datetime | None = None,
) -> StoredResponse | None:
    """None when the caller now owns the key and must run the request; else what to replay.

    The caller commits right away so that the marker is visible to concurrent requests.
    """
    now = now or utcnow()
    for _ in range(3):  # the row may vanish between our insert and our read: try again
        try:
            with session.begin_nested():
                session.add(
                    _marker(tenant_id=tenant_id, key=key, request_hash=request_hash, now=now)
                )
                session.flush()
        except IntegrityError:
            pass
        else:
            return None
        # On PostgreSQL the insert waited for the other claim's commit; the lock orders takeovers.
        row = session.scalars(
            select(IdempotencyKey)
            .where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key)
            .with_for_update()
        ).one_or_none()
        if row is None:
            continue
        expired = row.expires_at <= now
        abandoned = row.response_status is None and row.created_at <= now - ABANDONED_AFTER
        if expired or (abandoned and row.request_hash == request_hash):
            row.request_hash = request_hash
            row.response_status = None
            row.response_body = None
            row.created_at = now
            row.expires_at = now + KEY_TTL
            session.flush()
            return None
        if row.request_hash != request_hash:
            raise IdempotencyKeyReusedError(key)
        if row.response_status is None:
            raise IdempotencyKeyInFlightError(key)
        return StoredResponse(status=row.response_status, body=row.response_body)
    raise IdempotencyKeyInFlightError(key)


def record_idempotent_response(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    key: str,
    request_hash: str,
    response: StoredResponse,
) -> None:
    """Store the response on our own in-flight marker (not on one that took it over)."""
    session.execute(
        update(IdempotencyKey)
        .where(
            IdempotencyKey.tenant_id == tenant_id,
            IdempotencyKey.key == key,
            IdempotencyKey.request_hash == request_hash,
            IdempotencyKey.response_status.is_(None),
        )
        .values(response_status=response.status, response_body=response.body)
    )


def release_idempotency_key(
    session: Session, *, tenant_id: uuid.UUID, key: str, request_hash: str
) -> None:
    """Drop an in-flight marker whose request failed unexpectedly, so a retry may run."""
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id,
            IdempotencyKey.key == key,
            IdempotencyKey.request_hash == request_hash,
            IdempotencyKey.response_status.is_(None),
        )
    )


def purge_expired_idempotency_keys(session: Session, *, now: datetime | None = None) -> int:
    result = session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.expires_at <= (now or utcnow()))
    )
    return int(getattr(result, "rowcount", 0) or 0)


def run_idempotently(
    db: Database,
    *,
    tenant_id: uuid.UUID,
    key: str,
    request_hash: str,
    action: Callable[[Session], StoredResponse],
    error_response: Callable[[Exception], StoredResponse | None],
) -> tuple[StoredResponse, bool]:
    """Run `action` once for this key: (its response, False), or (the first response, True).

    `action` runs in its own unit of work together with the storing of its response.
    `error_response` turns an expected failure into the response to store and replay; for any
    other exception it returns None, the key is released and the exception propagates.
    Raises IdempotencyKeyInFlightError or IdempotencyKeyReusedError.
    """
    with db.unit_of_work() as session:
        stored = claim_idempotency_key(
            session, tenant_id=tenant_id, key=key, request_hash=request_hash
        )
    if stored is not None:
        return stored, True
    try:
        with db.unit_of_work() as session:
            response = action(session)
            record_idempotent_response(
                session,
                tenant_id=tenant_id,
                key=key,
                request_hash=request_hash,
                response=response,
            )
    except Exception as exc:
        failure = error_response(exc)
        with db.unit_of_work() as session:
            if failure is None:
                release_idempotency_key(
                    session, tenant_id=tenant_id, key=key, request_hash=request_hash
                )
            else:
                record_idempotent_response(
                    session,
                    tenant_id=tenant_id,
                    key=key,
                    request_hash=request_hash,
                    response=failure,
                )
        if failure is None:
            raise
        return failure, False
    return response, False


def _marker(*, tenant_id: uuid.UUID, key: str, request_hash: str, now: datetime) -> IdempotencyKey:
    return IdempotencyKey(
        tenant_id=tenant_id,
        key=key,
        request_hash=request_hash,
        response_status=None,
        response_body=None,
        created_at=now,
        expires_at=now + KEY_TTL,
    )
