"""Webhooks end to end: real `intake worker` processes (ingest and deliveries), real Redis
broker, a database of the test's own, and the receiver on 127.0.0.1 going down and up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Select, func, select

from intake.settings import Settings
from models.contacts import create_contact
from models.db import Database
from models.migrate import upgrade
from models.schema import Event, Message, WebhookDelivery
from models.webhook_endpoints import create_endpoint
from tests.conftest import PG_ADMIN_DSN
from tests.events.receiver import Answer, Receiver, ReceiverServer, free_port, wait_until
from tests.factories import make_tenant
from tests.worker.helpers import inbound
from worker.accept import accept
from worker.celery_app import make_celery
from worker.dispatch import Dispatcher

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def own_database(postgres_url: str) -> Iterator[Database]:
    """A database for this test alone: the delivery pump sweeps every endpoint it finds."""
    name = f"intake_events_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN + " dbname=postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = postgres_url.rsplit("/", 1)[0] + "/" + name
    upgrade(url)
    database = Database(url)
    yield database
    database.dispose()
    with psycopg.connect(PG_ADMIN_DSN + " dbname=postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Processes:
    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> None:
        log = (self.cwd / f"proc-{len(self.procs)}.log").open("wb")
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "intake", *args],
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.cwd.glob("proc-*.log"))


@pytest.fixture
def processes(own_database: Database, redis_url: str, tmp_path: Path) -> Iterator[Processes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_")}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "INTAKE_DATABASE_URL": own_database.url,
            "INTAKE_BROKER_URL": redis_url,
            "INTAKE_REDIS_URL": redis_url,
            "INTAKE_EVENTS_ALLOW_PRIVATE": "1",
            "INTAKE_DELIVERY_POLL_SECONDS": "0.2",
            "INTAKE_DELIVERY_TIMEOUT_SECONDS": "2",
            # 5 s, 5 min … become 50 ms, 3 s …: a down receiver is retried within seconds.
            "INTAKE_DELIVERY_BACKOFF_SCALE": "0.01",
            "INTAKE_RECONCILE_EVERY_SECONDS": "1",
        }
    )
    procs = Processes(env, tmp_path)
    yield procs
    procs.kill_all()


def _count(db: Database, statement: Select[int]) -> int:
    with db.sessions() as session:
        return int(session.scalar(statement) or 0)


def test_events_reach_the_receiver_after_it_was_down_and_ingestion_never_waits(
    own_database: Database, redis_url: str, processes: Processes
) -> None:
    """Receiver down: 30 messages are still ingested at once. Back up: every event of the
    tenant is received (verified) at least once, none lost, in sequence order per endpoint."""
    db = own_database
    tenant = make_tenant(db)
    port = free_port()
    server = ReceiverServer(Receiver(), port=port)
    with db.unit_of_work() as session:
        endpoint = create_endpoint(session, tenant_id=tenant.id, url=server.url)
    server.receiver.secrets = [endpoint.secret]
    processes.start("worker", "--concurrency", "1")
    processes.start("worker", "--deliveries", "--concurrency", "4")
    settings = Settings(database_url=db.url, broker_url=redis_url, redis_url=redis_url)
    dispatcher = Dispatcher(settings, make_celery(settings))
    messages = [inbound("sms", phone=f"+1212555{n % 10:04d}") for n in range(30)]
    for message in messages:
        accept(db, dispatcher, tenant_id=tenant.id, messages=[message])
    handled = (
        select(func.count())
        .select_from(Message)
        .where(Message.tenant_id == tenant.id, Message.state == "handled")
    )
    wait_until(
        lambda: _count(db, handled) == 30, timeout=60, what="30 handled\n" + processes.logs()
    )
    tried = select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.attempts > 0)
    wait_until(lambda: _count(db, tried) >= 1, timeout=30, what="a failed attempt")
    server.start()
    try:
        with db.sessions() as session:
            event_ids = {
                str(i)
                for i in session.scalars(select(Event.id).where(Event.tenant_id == tenant.id))
            }
        assert len(event_ids) == 40  # 10 contacts created, 30 messages received
        wait_until(
            lambda: set(server.receiver.ids(status=200)) >= event_ids,
            timeout=90,
            what="every event delivered\n" + processes.logs(),
        )
    finally:
        server.stop()
    received = server.receiver.received
    assert all(r.verified_by == [0] for r in received)
    sequences = [r.body["sequence"] for r in received if r.status == 200]
    assert sequences == sorted(sequences)


def test_slow_receiver_is_timed_out_and_retried_by_the_worker(
    own_database: Database, processes: Processes
) -> None:
    """A receiver slower than the 2 s timeout, then fast: the event arrives, after a retry."""
    db = own_database
    tenant = make_tenant(db)
    server = ReceiverServer(
        Receiver(script=__import__("collections").deque([Answer(200, delay=3)]))
    )
    server.start()
    try:
        with db.unit_of_work() as session:
            create_endpoint(session, tenant_id=tenant.id, url=server.url)
        processes.start("worker", "--deliveries", "--concurrency", "2")
        with db.unit_of_work() as session:
            create_contact(
                session, tenant_id=tenant.id, region="US", name="Slow", email="slow@example.com"
            )
        wait_until(
            lambda: len(server.receiver.received) >= 2,
            timeout=60,
            what="a timed-out attempt and its retry\n" + processes.logs(),
        )
    finally:
        server.stop()
    first, second = server.receiver.received[:2]
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


def test_a_slow_endpoint_does_not_hold_up_another_tenants_deliveries(
    own_database: Database, processes: Processes
) -> None:
    """Tenant A's receiver takes 1.5 s an answer; tenant B's 10 events all arrive while A's
    are still trickling in: rounds of different endpoints run on different threads."""
    db = own_database
    slow = ReceiverServer(Receiver(default=Answer(200, delay=1.5))).start()
    fast = ReceiverServer(Receiver()).start()
    try:
        tenants = [make_tenant(db), make_tenant(db)]
        with db.unit_of_work() as session:
            create_endpoint(session, tenant_id=tenants[0].id, url=slow.url)
            create_endpoint(session, tenant_id=tenants[1].id, url=fast.url)
        for tenant in tenants:
            for n in range(10):
                with db.unit_of_work() as session:
                    create_contact(
                        session,
                        tenant_id=tenant.id,
                        region="US",
                        name="Jo",
                        email=f"jo{n}@example.com",
                    )
        processes.start("worker", "--deliveries", "--concurrency", "4")
        wait_until(
            lambda: len(fast.receiver.ids(status=200)) == 10,
            timeout=30,
            what="tenant B's 10 deliveries\n" + processes.logs(),
        )
        assert len(slow.receiver.ids()) < 10
    finally:
        slow.stop()
        fast.stop()
