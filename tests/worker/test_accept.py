"""Durable acceptance and the coalesced wake-up, on real databases and a real Redis broker."""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from intake.settings import Settings
from models.db import Database
from tests.factories import make_tenant
from tests.worker.helpers import inbound, message_rows
from worker.accept import AcceptUnavailableError, NonceReplayedError, accept
from worker.celery_app import QUEUE, make_celery
from worker.dispatch import Dispatcher, scheduled_key


@pytest.fixture
def redis_dispatcher(redis_url: str, redis_client: redis.Redis) -> Dispatcher:
    redis_client.delete(QUEUE)
    settings = Settings(broker_url=redis_url, redis_url=redis_url)
    return Dispatcher(settings, make_celery(settings))


def queued_tasks(client: redis.Redis) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in client.lrange(QUEUE, 0, -1)]


def test_accept_stores_pending_rows_and_counts_duplicates(
    db: Database, redis_dispatcher: Dispatcher, redis_client: redis.Redis
) -> None:
    """New messages are stored pending; a redelivery is counted as a duplicate, not stored."""
    tenant = make_tenant(db)
    first, second = inbound("sms", phone="+14155550120"), inbound("sms", phone="+14155550121")
    result = accept(
        db, redis_dispatcher, tenant_id=tenant.id, messages=[first, second], request_id="req-1"
    )
    again = accept(db, redis_dispatcher, tenant_id=tenant.id, messages=[first])
    assert (result.new, result.duplicates, again.new, again.duplicates) == (2, 0, 0, 1)
    rows = message_rows(db, tenant.id)
    assert sorted(r.id for r in rows) == sorted(result.message_ids)
    assert {(r.state, r.attempts, r.request_id) for r in rows} == {("pending", 0, "req-1")}
    assert {r.body for r in rows} == {first.text}


def test_accept_coalesces_wake_ups_per_tenant(
    db: Database, redis_dispatcher: Dispatcher, redis_client: redis.Redis
) -> None:
    """While a drain is queued for a tenant, further accepts send no task; clearing re-arms."""
    tenant = make_tenant(db)
    for _ in range(5):
        accept(db, redis_dispatcher, tenant_id=tenant.id, messages=[inbound("sms")])
    assert len(queued_tasks(redis_client)) == 1
    assert redis_client.exists(scheduled_key(tenant.id))
    redis_dispatcher.clear_flag(tenant.id)
    accept(db, redis_dispatcher, tenant_id=tenant.id, messages=[inbound("sms")])
    tasks = queued_tasks(redis_client)
    assert len(tasks) == 2
    assert all(t["headers"]["task"] == "intake.ingest_tenant" for t in tasks)  # type: ignore[index]


def test_replayed_nonce_is_refused_and_stores_nothing(
    db: Database, redis_dispatcher: Dispatcher
) -> None:
    """A used nonce raises NonceReplayedError and its messages are not stored."""
    tenant = make_tenant(db)
    accept(
        db,
        redis_dispatcher,
        tenant_id=tenant.id,
        messages=[inbound("email", email="a@example.com")],
        nonce=("mailgun", "tok-1"),
    )
    with pytest.raises(NonceReplayedError):
        accept(
            db,
            redis_dispatcher,
            tenant_id=tenant.id,
            messages=[inbound("email", email="b@example.com")],
            nonce=("mailgun", "tok-1"),
        )
    assert len(message_rows(db, tenant.id)) == 1


def test_unwritable_database_is_unavailable(redis_dispatcher: Dispatcher) -> None:
    """A database that cannot be reached raises AcceptUnavailableError (the webhook's 503)."""
    down = Database(
        "postgresql+psycopg://postgres@127.0.0.1:1/nowhere", connect_args={"connect_timeout": 2}
    )
    with pytest.raises(AcceptUnavailableError):
        accept(down, redis_dispatcher, tenant_id=uuid.uuid4(), messages=[inbound("sms")])


def test_failed_dispatch_after_commit_keeps_the_message(db: Database) -> None:
    """With the broker down, accept still returns: the row is committed for the reconciler."""
    tenant = make_tenant(db)
    settings = Settings(broker_url="redis://127.0.0.1:1/0", redis_url="")
    app = make_celery(settings)
    app.conf.broker_connection_timeout = 1
    app.conf.broker_transport_options = {"max_retries": 0}
    result = accept(
        db,
        Dispatcher(settings, app),
        tenant_id=tenant.id,
        messages=[inbound("sms", phone="+14155550122")],
    )
    assert result.new == 1
    assert [r.state for r in message_rows(db, tenant.id)] == ["pending"]


def test_overlong_provider_id_is_stored_hashed_and_still_deduplicated(
    db: Database, redis_dispatcher: Dispatcher
) -> None:
    """A provider id longer than the column is stored as its hash; a redelivery is a duplicate."""
    tenant = make_tenant(db)
    message = inbound("email", email="x@example.com", provider_message_id="<" + "a" * 400 + ">")
    first = accept(
        db, redis_dispatcher, tenant_id=tenant.id, messages=[message], request_id="r" * 100
    )
    again = accept(db, redis_dispatcher, tenant_id=tenant.id, messages=[message])
    assert (first.new, again.duplicates) == (1, 1)
    [row] = message_rows(db, tenant.id)
    assert row.provider_message_id.startswith("sha256:")
