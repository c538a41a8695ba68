"""The per-tenant lock on real Redis, and what happens when its lease runs out under a holder."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis
from sqlalchemy import text

from models.db import Database
from tests.factories import make_tenant
from tests.support import wait_for
from tests.worker.helpers import inbound, live_contacts, message_rows, store
from worker.ingestion import drain_tenant, ingest_batch, select_pending
from worker.locks import (
    LocalTenantLocks,
    LockLostError,
    LockWaitTimeoutError,
    RedisTenantLocks,
)


def test_redis_lock_is_exclusive_and_bounded(redis_client: redis.Redis) -> None:
    """A second holder waits at most the wait bound, then gets LockWaitTimeoutError."""
    locks = RedisTenantLocks(redis_client, lease_seconds=5, wait_seconds=0.2)
    tenant_id = uuid.uuid4()
    with locks.hold(tenant_id), pytest.raises(LockWaitTimeoutError), locks.hold(tenant_id):
        pass
    with locks.hold(tenant_id):  # released on exit, so free again
        assert redis_client.exists(RedisTenantLocks.key(tenant_id))


def test_expired_lease_cannot_be_extended(redis_client: redis.Redis) -> None:
    """A holder whose lease ran out and was taken learns it on extend: LockLostError."""
    locks = RedisTenantLocks(redis_client, lease_seconds=0.2, wait_seconds=2)
    tenant_id = uuid.uuid4()
    with locks.hold(tenant_id) as lease:
        with locks.hold(tenant_id):  # waits for the lease to expire, then holds it
            pass
        with pytest.raises(LockLostError):
            lease.extend()


def test_local_lock_is_exclusive() -> None:
    """The in-process fallback refuses a second holder after the wait bound."""
    locks = LocalTenantLocks(wait_seconds=0.05)
    tenant_id = uuid.uuid4()
    with locks.hold(tenant_id), pytest.raises(LockWaitTimeoutError), locks.hold(tenant_id):
        pass


@pytest.mark.postgres_only
def test_stalled_holder_past_its_lease_makes_no_duplicate(
    postgres_db: Database, redis_client: redis.Redis
) -> None:
    """A drain stalled past its lease and the drain taking over still make one contact each."""
    # Row locks and the unique indexes settle what the expired lock no longer does.
    db = postgres_db
    tenant = make_tenant(db)
    people = [f"+1415555{n:04d}" for n in range(30)]
    # Each person writes twice, on two channels, so both drains meet every person.
    store(db, tenant.id, *[inbound("sms", phone=p, display_name=f"P{p[-2:]}") for p in people])
    store(db, tenant.id, *[inbound("whatsapp", sender_id=p[1:], phone=p) for p in people])
    locks = RedisTenantLocks(redis_client, lease_seconds=0.5, wait_seconds=10)
    stalled_done = threading.Event()
    errors: list[BaseException] = []

    def stalled_holder() -> None:
        try:
            with locks.hold(tenant.id), db.unit_of_work() as session:
                rows = select_pending(session, tenant_id=tenant.id, limit=30)
                ingest_batch(session, tenant_id=tenant.id, rows=rows, max_attempts=5)
                # Stall with the batch written but not committed, until the other drain
                # holds the lock and waits on our uncommitted contacts.
                wait_for(
                    lambda: _waiting_on_row_locks(db) > 0,
                    timeout=20,
                    what="the second drain to block on our rows",
                )
        except BaseException as exc:
            errors.append(exc)
        finally:
            stalled_done.set()

    holder = threading.Thread(target=stalled_holder)
    holder.start()
    wait_for(
        lambda: redis_client.exists(RedisTenantLocks.key(tenant.id)) == 1,
        what="the first drain to hold the lock",
    )
    result = drain_tenant(
        db, locks, tenant_id=tenant.id, batch_size=200, max_attempts=5, budget_seconds=30
    )
    holder.join(timeout=30)
    assert not errors
    assert stalled_done.is_set()
    contacts = live_contacts(db, tenant.id)
    assert sorted(c.phone for c in contacts) == sorted(people)
    rows = message_rows(db, tenant.id)
    assert {r.state for r in rows} == {"handled"}
    by_phone = {c.phone: c.id for c in contacts}
    assert all(r.contact_id == by_phone[r.payload["phone"]] for r in rows)
    assert result.handled == 30


def _waiting_on_row_locks(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )
