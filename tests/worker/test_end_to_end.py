"""The pipeline end to end: real PostgreSQL, real Redis, real `intake worker` processes.

Workers are separate processes started with `python -m intake worker`, killed in teardown.
Every wait is on a database condition with a deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select, update

from channels.base import InboundMessage
from intake.settings import Settings
from models.db import Database
from models.migrate import upgrade
from models.schema import Contact, Message
from tests.conftest import REDIS_CLAIM_KEY
from tests.factories import make_tenant
from tests.support import REPO, Workers, wait_for, worker_env
from tests.worker.helpers import inbound, live_contacts, message_rows
from tests.worker.workload import Person, crowd
from worker.accept import accept
from worker.celery_app import make_celery
from worker.dispatch import Dispatcher
from worker.events import list_failed
from worker.runner import start_embedded_worker

pytestmark = pytest.mark.e2e


@pytest.fixture
def pg_workers(postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    workers = Workers(worker_env(postgres_url, redis_url, redis_url), tmp_path)
    yield workers
    workers.kill_all()


@pytest.fixture
def pg_settings(postgres_url: str, redis_url: str) -> Settings:
    return Settings(
        database_url=postgres_url,
        broker_url=redis_url,
        redis_url=redis_url,
        reconcile_after_seconds=2,
    )


class AcceptingTwice:
    """Every message accepted twice (a provider's redelivery), from `threads` threads at once.

    The threads only record what they raise; `join()` in the test's own thread fails the test
    when a thread raised or did not finish.
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        tenant_id: uuid.UUID,
        messages: Sequence[InboundMessage],
        threads: int = 8,
    ) -> None:
        calls = [m for m in messages for _ in range(2)]
        self.errors: list[BaseException] = []

        def run(share: Sequence[InboundMessage]) -> None:
            dispatcher = Dispatcher(settings, make_celery(settings))
            try:
                for message in share:
                    accept(db, dispatcher, tenant_id=tenant_id, messages=[message])
            except BaseException as exc:
                self.errors.append(exc)

        self.pool = [
            threading.Thread(target=run, args=(calls[i::threads],)) for i in range(threads)
        ]
        for thread in self.pool:
            thread.start()

    def join(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.pool:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = sum(thread.is_alive() for thread in self.pool)
        assert stuck == 0, f"{stuck} accepting thread(s) still running after {timeout} s"
        if self.errors:
            raise self.errors[0]


def accept_twice_from_threads(
    db: Database,
    settings: Settings,
    tenant_id: uuid.UUID,
    messages: Sequence[InboundMessage],
    threads: int = 8,
) -> None:
    """Every message accepted twice, from `threads` threads at once; fails on any error."""
    AcceptingTwice(db, settings, tenant_id, messages, threads).join()


def handled_count(db: Database, tenant_id: uuid.UUID) -> int:
    with db.sessions() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.tenant_id == tenant_id, Message.state == "handled")
            )
            or 0
        )


def assert_exact_outcome(
    db: Database, tenant_id: uuid.UUID, persons: list[Person], messages: Sequence[InboundMessage]
) -> None:
    contacts = live_contacts(db, tenant_id)
    assert sorted(c.phone or c.email or "" for c in contacts) == sorted(p.key for p in persons)
    rows = message_rows(db, tenant_id)
    assert len(rows) == len(messages)
    assert {r.state for r in rows} == {"handled"}
    by_key = {(c.phone or c.email): c.id for c in contacts}
    for row in rows:
        phone = row.payload["phone"]
        key = ("+" + phone.lstrip("+")) if phone else row.payload["email"]
        assert row.contact_id == by_key[key]


def test_concurrent_accepts_into_two_workers_make_exact_contacts(
    postgres_db: Database, pg_settings: Settings, pg_workers: Workers
) -> None:
    """600 messages of 60 people, each accepted twice from 8 threads: 60 contacts, 600 handled."""
    tenant = make_tenant(postgres_db)
    persons, messages = crowd()
    pg_workers.start(2)
    accept_twice_from_threads(postgres_db, pg_settings, tenant.id, messages)
    wait_for(
        lambda: handled_count(postgres_db, tenant.id) == 600,
        timeout=40,
        what="600 handled messages\n" + pg_workers.logs(),
    )
    assert_exact_outcome(postgres_db, tenant.id, persons, messages)
    telegram = [c for c in live_contacts(postgres_db, tenant.id) if c.source == "telegram"]
    # The crowd's seeded order makes some Telegram sender write first: an empty list would
    # make the language check below prove nothing.
    assert telegram, "no contact came from Telegram"
    assert {c.language for c in telegram} == {"es"}


def test_worker_killed_mid_drain_loses_and_doubles_nothing(
    postgres_db: Database, pg_settings: Settings, pg_workers: Workers
) -> None:
    """One of two workers SIGKILLed while messages flow, another started: same exact counts."""
    tenant = make_tenant(postgres_db)
    persons, messages = crowd()
    first, _second = pg_workers.start(2)
    accepting = AcceptingTwice(postgres_db, pg_settings, tenant.id, messages)
    wait_for(
        lambda: handled_count(postgres_db, tenant.id) > 0,
        timeout=30,
        what="the first handled message",
    )
    pg_workers.kill(first)
    pg_workers.start(1)
    accepting.join(timeout=60)
    wait_for(
        lambda: handled_count(postgres_db, tenant.id) == 600,
        timeout=60,
        what="600 handled messages\n" + pg_workers.logs(),
    )
    assert_exact_outcome(postgres_db, tenant.id, persons, messages)


def test_lost_queue_is_reconciled(
    postgres_db: Database,
    pg_settings: Settings,
    pg_workers: Workers,
    redis_client: redis.Redis,
) -> None:
    """Accepted messages whose tasks the broker lost (its keys deleted) are ingested once each."""
    tenant = make_tenant(postgres_db)
    persons, messages = crowd(people=20)
    accept_twice_from_threads(postgres_db, pg_settings, tenant.id, messages)
    assert redis_client.llen("intake") > 0
    # Everything but this run's claim: FLUSHDB would free the database number for another run.
    for key in redis_client.scan_iter():
        if key != REDIS_CLAIM_KEY.encode():
            redis_client.delete(key)
    pg_workers.start(2)
    wait_for(
        lambda: handled_count(postgres_db, tenant.id) == 200,
        timeout=40,
        what="200 handled messages\n" + pg_workers.logs(),
    )
    assert_exact_outcome(postgres_db, tenant.id, persons, messages)


def test_poison_message_is_parked_listed_and_replayed(
    postgres_db: Database, pg_settings: Settings, pg_workers: Workers
) -> None:
    """A failing message is parked after N attempts, listed, and replayed once fixed."""
    tenant = make_tenant(postgres_db)
    good, poison = inbound("sms", phone="+14155550130"), inbound("sms", phone="+14155550131")
    dispatcher = Dispatcher(pg_settings, make_celery(pg_settings))
    [poison_id] = accept(
        postgres_db, dispatcher, tenant_id=tenant.id, messages=[poison]
    ).message_ids
    with postgres_db.unit_of_work() as session:  # corrupt it before any worker reads it
        session.execute(
            update(Message).where(Message.id == poison_id).values(payload={"channel": "sms"})
        )
    accept(postgres_db, dispatcher, tenant_id=tenant.id, messages=[good])
    pg_workers.start(1)

    def poison_state() -> tuple[str, int]:
        row = next(r for r in message_rows(postgres_db, tenant.id) if r.id == poison_id)
        return row.state, row.attempts

    wait_for(
        lambda: poison_state() == ("failed", 3),
        timeout=40,
        what="the poison message to be parked\n" + pg_workers.logs(),
    )
    assert handled_count(postgres_db, tenant.id) == 1
    [event] = list_failed(postgres_db, tenant_id=tenant.id)
    assert (event.id, event.attempts) == (poison_id, 3)
    assert "KeyError" in (event.last_error or "")

    cli = [sys.executable, "-m", "intake", "events"]
    listed = subprocess.run(
        [*cli, "failed", "--tenant", str(tenant.id), "--json"],
        env=pg_workers.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert [e["id"] for e in json.loads(listed.stdout)] == [str(poison_id)]
    assert poison.text not in listed.stdout  # never the body

    with postgres_db.unit_of_work() as session:  # the operator fixes the cause
        session.execute(
            update(Message).where(Message.id == poison_id).values(payload=poison.to_json())
        )
    replayed = subprocess.run(
        [*cli, "replay", str(poison_id)],
        env=pg_workers.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replayed.returncode == 0, replayed.stderr
    wait_for(
        lambda: handled_count(postgres_db, tenant.id) == 2,
        timeout=30,
        what="the replayed message to be handled\n" + pg_workers.logs(),
    )
    assert list_failed(postgres_db, tenant_id=tenant.id) == []
    unknown = subprocess.run(
        [*cli, "replay", str(uuid.uuid4())],
        env=pg_workers.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 1
    assert len(unknown.stderr.strip().splitlines()) == 1


def test_embedded_defaults_ingest_exactly(tmp_path: Path) -> None:
    """With nothing configured (SQLite, embedded broker, no Redis) a worker ingests exactly."""
    upgrade(f"sqlite:///{tmp_path}/intake.db")
    db = Database(f"sqlite:///{tmp_path}/intake.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_")}
    env["PYTHONPATH"] = str(REPO)
    workers = Workers(env, tmp_path)
    try:
        tenant = make_tenant(db)
        persons, messages = crowd(people=12, per_person=5)
        # What the defaults resolve to when run from tmp_path, as the worker is.
        settings = Settings(
            database_url=f"sqlite:///{tmp_path}/intake.db",
            broker_url=f"sqla+sqlite:///{tmp_path}/intake-broker.db",
            redis_url="",
        )
        accept_twice_from_threads(db, settings, tenant.id, messages, threads=4)
        workers.start(1)
        wait_for(
            lambda: handled_count(db, tenant.id) == 60,
            timeout=60,
            what="60 handled messages\n" + workers.logs(),
        )
        assert_exact_outcome(db, tenant.id, persons, messages)
    finally:
        workers.kill_all()
        db.dispose()


def test_embedded_worker_runs_inside_this_process(tmp_path: Path) -> None:
    """`start_embedded_worker` ingests on a thread of the calling process and stops cleanly."""
    url = f"sqlite:///{tmp_path}/intake.db"
    upgrade(url)
    db = Database(url)
    settings = Settings(
        database_url=url, broker_url=f"sqla+sqlite:///{tmp_path}/broker.db", redis_url=""
    )
    worker = start_embedded_worker(settings)
    try:
        tenant = make_tenant(db)
        dispatcher = Dispatcher(settings, worker.app)
        for n in range(5):
            accept(
                db,
                dispatcher,
                tenant_id=tenant.id,
                messages=[inbound("sms", phone=f"+1415555{n:04d}")],
            )
        wait_for(lambda: handled_count(db, tenant.id) == 5, timeout=30, what="5 handled messages")
        assert len(live_contacts(db, tenant.id)) == 5
    finally:
        worker.stop()
        db.dispose()
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Contact)) == 5
