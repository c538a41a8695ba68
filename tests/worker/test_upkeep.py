"""The reconciler, the task's scheduling around a drain, and failed events with their replay."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import select, update

from channels import mailgun
from intake.settings import Settings
from models.db import Database
from models.schema import IdempotencyKey, Message, WebhookNonce
from tests.factories import make_tenant
from tests.worker.helpers import drain, inbound, message_rows, store
from worker.celery_app import QUEUE, make_celery
from worker.context import WorkerContext
from worker.dispatch import RECONCILE_TASK, Dispatcher, scheduled_key
from worker.events import UnknownEventError, list_failed, replay
from worker.reconciler import DUE_KEY, NONCE_RETENTION, ReconcileTimer, prune_expired, reconcile
from worker.tasks import ingest_tenant_now


@pytest.fixture
def settings(db: Database, redis_url: str, redis_client: redis.Redis) -> Settings:
    redis_client.delete(QUEUE, DUE_KEY)
    return Settings(
        database_url=db.url,
        broker_url=redis_url,
        redis_url=redis_url,
        reconcile_after_seconds=30,
        max_attempts=2,
    )


@pytest.fixture
def dispatcher(settings: Settings) -> Dispatcher:
    return Dispatcher(settings, make_celery(settings))


def queued(client: redis.Redis) -> list[tuple[str, str, object]]:
    """(task name, tenant id, eta) of each task waiting in the broker's queue."""
    tasks = []
    for raw in client.lrange(QUEUE, 0, -1):
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        tenant = args[0] if args else ""
        tasks.append((message["headers"]["task"], tenant, message["headers"]["eta"]))
    return tasks


def test_reconciler_wakes_tenants_with_stale_pending_rows(
    db: Database, dispatcher: Dispatcher, redis_client: redis.Redis
) -> None:
    """Only tenants with stale pending rows get a drain re-sent, even with their flag set."""
    stale, fresh = make_tenant(db), make_tenant(db)
    [old] = store(db, stale.id, inbound("sms", phone="+14155550140"))
    store(db, fresh.id, inbound("sms", phone="+14155550141"))
    with db.unit_of_work() as session:
        session.execute(
            update(Message)
            .where(Message.id == old)
            .values(accepted_at=datetime.now(UTC) - timedelta(hours=2))
        )
    redis_client.set(scheduled_key(stale.id), 1)
    reconcile(db, dispatcher, older_than_seconds=3600)
    tenants = [tenant for _, tenant, _ in queued(redis_client)]
    assert str(stale.id) in tenants
    assert str(fresh.id) not in tenants


def test_reconcile_timer_sends_once_per_period_across_workers(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """Of two workers' timers ticking in the same period, one sends the reconcile task."""
    first = ReconcileTimer(settings, make_celery(settings))
    second = ReconcileTimer(settings, make_celery(settings))
    assert [first.tick(), second.tick()] == [True, False]
    assert [name for name, _, _ in queued(redis_client)] == ["intake.reconcile"]


def test_drain_task_clears_flag_and_schedules_retry_of_errors(
    db: Database, settings: Settings, redis_client: redis.Redis
) -> None:
    """The task clears the tenant's flag, then re-wakes an erred row later with a delay."""
    tenant = make_tenant(db)
    [bad] = store(db, tenant.id, inbound("sms", phone="+14155550142"))
    store(db, tenant.id, inbound("sms", phone="+14155550143"))
    with db.unit_of_work() as session:
        session.execute(update(Message).where(Message.id == bad).values(payload={}))
    redis_client.set(scheduled_key(tenant.id), 1)
    context = WorkerContext(settings, make_celery(settings))
    context.__dict__["db"] = db  # the test's engine, not a second pool on the same database
    result = ingest_tenant_now(context, tenant_id=tenant.id)
    assert (result.handled, list(result.retrying)) == (1, [bad])
    assert not redis_client.exists(scheduled_key(tenant.id))
    [(name, woken, eta)] = queued(redis_client)
    assert (name, woken) == ("intake.ingest_tenant", str(tenant.id))
    assert eta is not None


def test_failed_events_are_listed_without_body_and_replayed(
    db: Database, settings: Settings, dispatcher: Dispatcher, redis_client: redis.Redis
) -> None:
    """A parked message is listed (never its body) and a replay makes it pending, fresh."""
    tenant = make_tenant(db)
    message = inbound("sms", phone="+14155550144", text="secret viewing code 4411")
    [bad] = store(db, tenant.id, message)
    with db.unit_of_work() as session:
        session.execute(update(Message).where(Message.id == bad).values(payload={}))
    drain(db, tenant.id, max_attempts=1)
    [event] = list_failed(db, tenant_id=tenant.id)
    assert (event.id, event.channel, event.attempts) == (bad, "sms", 1)
    assert "4411" not in event.line()
    assert "4411" not in json.dumps(event.to_json())
    assert str(bad) in event.line()
    assert replay(db, settings, message_ids=[bad], dispatcher=dispatcher) == 1
    [row] = message_rows(db, tenant.id)
    assert (row.state, row.attempts) == ("pending", 0)
    assert ("intake.ingest_tenant", str(tenant.id)) in [
        (name, woken) for name, woken, _ in queued(redis_client)
    ]
    assert list_failed(db, tenant_id=tenant.id) == []


def test_replay_refuses_unknown_or_unfailed_ids_whole(
    db: Database, settings: Settings, dispatcher: Dispatcher
) -> None:
    """An unknown id, or one that is not failed, raises UnknownEventError and changes nothing."""
    tenant = make_tenant(db)
    [pending] = store(db, tenant.id, inbound("sms", phone="+14155550145"))
    missing = uuid.uuid4()
    with pytest.raises(UnknownEventError, match=str(missing)) as caught:
        replay(db, settings, message_ids=[missing], dispatcher=dispatcher)
    assert "\n" not in str(caught.value)
    with pytest.raises(UnknownEventError):
        replay(db, settings, message_ids=[pending], dispatcher=dispatcher)
    assert [r.state for r in message_rows(db, tenant.id)] == ["pending"]


def _keys_and_nonces(db: Database, tenant_id: uuid.UUID) -> tuple[set[str], set[str]]:
    with db.sessions() as session:
        keys = session.scalars(
            select(IdempotencyKey.key).where(IdempotencyKey.tenant_id == tenant_id)
        )
        nonces = session.scalars(
            select(WebhookNonce.value).where(WebhookNonce.tenant_id == tenant_id)
        )
        return set(keys), set(nonces)


def _seed_expired_and_live(db: Database, tenant_id: uuid.UUID, now: datetime) -> None:
    """An expired and a live Idempotency-Key; a nonce past the retention and one within it."""
    with db.unit_of_work() as session:
        for key, expires in (("expired", now - timedelta(seconds=1)), ("live", now + DAY)):
            session.add(
                IdempotencyKey(
                    tenant_id=tenant_id,
                    key=key,
                    request_hash="0" * 64,
                    created_at=expires - DAY,
                    expires_at=expires,
                )
            )
        ages = {"old": NONCE_RETENTION + timedelta(seconds=1), "recent": timedelta(minutes=10)}
        for value, age in ages.items():
            session.add(
                WebhookNonce(
                    tenant_id=tenant_id, kind="email/mailgun", value=value, created_at=now - age
                )
            )


DAY = timedelta(days=1)


def test_prune_deletes_expired_keys_and_nonces_past_any_replay(db: Database) -> None:
    """Expired Idempotency-Keys and nonces older than the retention go; the others stay."""
    tenant = make_tenant(db)
    now = datetime.now(UTC)
    _seed_expired_and_live(db, tenant.id, now)
    pruned = prune_expired(db, now=now)
    assert pruned.idempotency_keys >= 1
    assert pruned.webhook_nonces >= 1
    assert _keys_and_nonces(db, tenant.id) == ({"live"}, {"recent"})


def test_nonces_outlive_every_timestamp_mailgun_would_still_accept() -> None:
    """A token whose timestamp was up to 15 min ahead stays refusable until it is 15 min stale."""
    assert NONCE_RETENTION >= 2 * mailgun.MAX_AGE


def test_the_reconcile_task_prunes_on_its_timer(
    db: Database, settings: Settings, redis_client: redis.Redis
) -> None:
    """The task the timer sends both re-wakes stale tenants and prunes what has expired."""
    tenant = make_tenant(db)
    now = datetime.now(UTC)
    _seed_expired_and_live(db, tenant.id, now)
    celery = make_celery(settings)
    context = WorkerContext(settings, celery)
    context.__dict__["db"] = db  # the test's engine, not a second pool on the same database
    celery.intake_context = context
    celery.tasks[RECONCILE_TASK]()
    assert _keys_and_nonces(db, tenant.id) == ({"live"}, {"recent"})
