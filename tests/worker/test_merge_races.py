"""Merges and ingestion at once on PostgreSQL: real workers, a served app, threads accepting.

Two contacts of one person (an SMS number, a Telegram id) receive 200 messages from 8 threads
into two `intake worker` processes; some messages attest the link and merge them, while the
API merges and undoes the same pair. Whatever the interleaving, nothing is orphaned, lost or
held twice, and the end state is exact. The attested links of the interface also run once
end to end through real workers.
"""

from __future__ import annotations

import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import func, select

from api.app import create_app
from channels.base import Identity, InboundMessage
from intake.settings import Settings
from models.db import Database
from models.schema import Contact, ContactIdentity, ContactMerge, Message
from tests.factories import TenantFixture, make_tenant
from tests.worker.helpers import inbound, live_contacts
from tests.worker.test_end_to_end import (
    Workers,
    accept_twice_from_threads,
    handled_count,
    wait_for,
    worker_env,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres_only]

CONTACTS = "/api/v1/contacts"
PHONE, TELEGRAM = "+14155557001", "7001"


@pytest.fixture
def pg_workers(postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    workers = Workers(worker_env(postgres_url, redis_url, redis_url), tmp_path)
    yield workers
    workers.kill_all()


@pytest.fixture
def served(postgres_url: str, postgres_db: Database, redis_url: str) -> Iterator[str]:
    """The app on a free port, with Redis locks shared with the workers."""
    settings = Settings(
        database_url=postgres_url,
        redis_url=redis_url,
        broker_url=redis_url,
        rate_limit_api_per_minute=0,
    )
    app = create_app(settings, db=postgres_db)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: bool(server.started), timeout=10, what="uvicorn to start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    assert not thread.is_alive()


def workload() -> list[InboundMessage]:
    """200 messages: SMS from the number, Telegram from the id, and a few attesting both."""
    messages = [inbound("sms", phone=PHONE) for _ in range(100)]
    messages += [inbound("telegram", sender_id=TELEGRAM, display_name="Ty") for _ in range(96)]
    messages += [inbound("telegram", sender_id=TELEGRAM, phone=PHONE) for _ in range(4)]
    random.Random(11).shuffle(messages)
    return messages


class ApiChurn:
    """A thread that merges the pair and undoes the merge, over and over, through the API."""

    def __init__(self, base_url: str, tenant: TenantFixture) -> None:
        self.client = httpx.Client(base_url=base_url, headers=tenant.auth, timeout=30)
        self.statuses: list[int] = []
        self.ops: list[int] = []  # the merges' and undos' statuses
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def step(self) -> None:
        listed = self.client.get(CONTACTS)
        self.statuses.append(listed.status_code)
        live = sorted(listed.json()["data"], key=lambda c: c["createdAt"])
        if len(live) >= 2:
            reply = self.client.post(
                f"{CONTACTS}/{live[0]['id']}/merge", json={"contactId": live[1]["id"]}
            )
            self.ops.append(reply.status_code)
        elif live:
            merges = self.client.get(f"{CONTACTS}/{live[0]['id']}/merges").json()["data"]
            open_ = [m for m in merges if m["undoneAt"] is None]
            if open_:
                reply = self.client.post(f"{CONTACTS}/{live[0]['id']}/merges/{open_[0]['id']}/undo")
                self.statuses.append(reply.status_code)

    def run(self) -> None:
        while not self.stop.is_set():
            self.step()

    def __enter__(self) -> ApiChurn:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def assert_consistent(db: Database, tenant_id: uuid.UUID) -> None:
    """No handled message without a live contact; every active identity on one live contact."""
    live = {c.id for c in live_contacts(db, tenant_id)}
    with db.sessions() as session:
        owners = set(
            session.scalars(
                select(Message.contact_id).where(
                    Message.tenant_id == tenant_id, Message.state == "handled"
                )
            )
        )
        held = list(
            session.execute(
                select(
                    ContactIdentity.kind, ContactIdentity.value, ContactIdentity.contact_id
                ).where(
                    ContactIdentity.tenant_id == tenant_id, ContactIdentity.retired_at.is_(None)
                )
            )
        )
    assert owners <= live
    assert {row.contact_id for row in held} <= live
    assert sorted((row.kind, row.value) for row in held) == [
        ("phone", PHONE),
        ("telegram", TELEGRAM),
    ]


def test_merges_undos_and_ingestion_race_without_loss(
    postgres_db: Database,
    redis_url: str,
    pg_workers: Workers,
    served: str,
) -> None:
    """200 messages from 8 threads into two workers while the API merges and undoes: exact."""
    db = postgres_db
    tenant = make_tenant(db)
    settings = Settings(database_url=db.url, broker_url=redis_url, redis_url=redis_url)
    pg_workers.start(2)
    # Both contacts exist before the churn starts, so the API has something to merge.
    accept_twice_from_threads(
        db,
        settings,
        tenant.id,
        [inbound("sms", phone=PHONE), inbound("telegram", sender_id=TELEGRAM)],
        threads=2,
    )
    wait_for(lambda: handled_count(db, tenant.id) == 2, timeout=30, what="the first two messages")
    messages = workload()
    with ApiChurn(served, tenant) as churn:
        accept_twice_from_threads(db, settings, tenant.id, messages, threads=8)
        wait_for(
            lambda: handled_count(db, tenant.id) == 202,
            timeout=90,
            what="202 handled messages\n" + pg_workers.logs(),
        )
        deadline = time.monotonic() + 30
        while churn.ops.count(200) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)  # let the churn run on the settled data too, with a deadline
    statuses = churn.statuses + churn.ops
    assert not [s for s in statuses if s >= 500 and s != 503], statuses
    assert set(churn.ops) <= {200, 400, 404, 409, 503}
    assert churn.ops.count(200) >= 20
    assert_consistent(db, tenant.id)

    # Settle deterministically: undo what is open, then one attested message joins them again.
    with httpx.Client(base_url=served, headers=tenant.auth, timeout=30) as client:
        live = client.get(CONTACTS).json()["data"]
        if len(live) == 1:
            merges = client.get(f"{CONTACTS}/{live[0]['id']}/merges").json()["data"]
            [open_] = [m for m in merges if m["undoneAt"] is None]
            undo = client.post(f"{CONTACTS}/{live[0]['id']}/merges/{open_['id']}/undo")
            assert undo.status_code == 200, undo.text
        assert len(client.get(CONTACTS).json()["data"]) == 2
        assert_consistent(db, tenant.id)
        accept_twice_from_threads(
            db,
            settings,
            tenant.id,
            [inbound("telegram", sender_id=TELEGRAM, phone=PHONE)],
            threads=1,
        )
        wait_for(lambda: handled_count(db, tenant.id) == 203, timeout=30, what="the last link")
        [survivor] = client.get(CONTACTS).json()["data"]
        messages_seen = client.get(f"{CONTACTS}/{survivor['id']}/messages").json()
        assert messages_seen["pagination"]["total"] == 203
        kinds = client.get(f"{CONTACTS}/{survivor['id']}/identities").json()["data"]
        assert sorted((i["kind"], i["value"]) for i in kinds) == [
            ("phone", PHONE),
            ("telegram", TELEGRAM),
        ]
    assert_consistent(db, tenant.id)
    with db.sessions() as session:
        total = session.scalar(
            select(func.count()).select_from(Contact).where(Contact.tenant_id == tenant.id)
        )
    # Only ever the two contacts: merges and undos never made a third.
    assert total == 2
    with db.sessions() as session:
        reasons = list(
            session.scalars(select(ContactMerge.reason).where(ContactMerge.tenant_id == tenant.id))
        )
    assert "api" in reasons
    assert "attested: telegram shared phone" in reasons


def test_links_end_to_end_through_real_workers(
    postgres_db: Database, redis_url: str, pg_workers: Workers
) -> None:
    """SMS then Telegram sharing the number; a changed WhatsApp number; RCS+SMS+WhatsApp."""
    db = postgres_db
    tenant = make_tenant(db)
    settings = Settings(database_url=db.url, broker_url=redis_url, redis_url=redis_url)
    pg_workers.start(2)
    steps = [
        inbound("sms", phone="+14155557101"),
        inbound("telegram", sender_id="7101", phone="+14155557101", display_name="Tel"),
        inbound("whatsapp", sender_id="14155557102", phone="+14155557102", display_name="Wa"),
        inbound(
            "whatsapp",
            sender_id="14155557103",
            phone="+14155557103",
            system=True,
            text=None,
            retired=(Identity("whatsapp", "14155557102"), Identity("phone", "+14155557102")),
        ),
        inbound("whatsapp", sender_id="14155557103", phone="+14155557103"),
        inbound("sms", phone="+14155557104", transport="rcs"),
        inbound("sms", phone="+14155557104"),
        inbound("whatsapp", sender_id="14155557104", phone="+14155557104"),
    ]
    for n, message in enumerate(steps, start=1):
        accept_twice_from_threads(db, settings, tenant.id, [message], threads=1)
        wait_for(lambda n=n: handled_count(db, tenant.id) == n, timeout=30, what=f"step {n}")
    contacts = {c.phone: c for c in live_contacts(db, tenant.id)}
    assert sorted(contacts) == ["+14155557101", "+14155557103", "+14155557104"]
    assert contacts["+14155557101"].name == "Tel"
    assert contacts["+14155557103"].name == "Wa"
    with db.sessions() as session:
        owners = list(
            session.scalars(select(Message.contact_id).where(Message.tenant_id == tenant.id))
        )
    assert sorted(owners.count(c.id) for c in contacts.values()) == [2, 3, 3]
