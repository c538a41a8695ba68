"""GET /metrics: every figure an operator watches is exposed, and each one moves with the traffic.

Pipeline figures are totals over all tenants of the database, which other tests share, so the
tests compare a scrape before with one after; exact queue figures use a database of their own.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from api.app import create_app
from intake.settings import Settings
from intake.signing import DEMO_SECRETS
from models.db import Database
from models.migrate import upgrade
from models.schema import Message, utcnow
from tests.factories import make_tenant
from tests.signed import SAMPLES, post_sample
from tests.worker.helpers import drain, inbound, store

EXPECTED_FAMILIES = {
    "intake_webhooks_received": "counter",
    "intake_webhooks_rejected": "counter",
    "intake_webhooks_ignored": "counter",
    "intake_webhook_secret_used": "counter",
    "intake_messages_accepted": "counter",
    "intake_messages_duplicate": "counter",
    "intake_messages_ingested": "counter",
    "intake_messages_failed": "gauge",
    "intake_messages": "gauge",
    "intake_contacts_created": "counter",
    "intake_contacts_merged": "counter",
    "intake_queue_depth": "gauge",
    "intake_queue_oldest_age_seconds": "gauge",
    "intake_database_up": "gauge",
}

Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def app(db: Database, tmp_path: Path) -> FastAPI:
    """The app on the test database, its queue a broker file of this test's own."""
    settings = Settings(database_url=db.url, broker_url=f"sqla+sqlite:///{tmp_path}/broker.db")
    return create_app(settings, db=db)


def scrape(client: TestClient) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(figures: Scrape, name: str, **labels: str) -> float:
    return figures.get((name, frozenset(labels.items())), 0.0)


def test_every_family_is_exposed_with_its_type(app: FastAPI) -> None:
    """A scrape names each webhook, ingestion, contact and queue figure, typed as it behaves."""
    response = TestClient(app).get("/metrics")
    families = {f.name: f.type for f in text_string_to_metric_families(response.text)}
    assert {name: families.get(name) for name in EXPECTED_FAMILIES} == EXPECTED_FAMILIES


def test_webhook_counters_move_by_channel_and_reason(app: FastAPI, db: Database) -> None:
    """Received, accepted and rejected (with the refusal's reason) count each webhook request."""
    client = TestClient(app)
    tenant = make_tenant(db, **DEMO_SECRETS)
    sms = SAMPLES[0]
    before = scrape(client)
    assert post_sample(client, tenant.id, sms) == 200
    assert post_sample(client, tenant.id, sms, **{"x-twilio-signature": "forged"}) == 403
    assert post_sample(client, uuid.uuid4(), sms) == 404
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("intake_webhooks_received_total", channel="twilio") == 3
    assert moved("intake_messages_accepted_total", channel="twilio") == 1
    assert moved("intake_webhooks_rejected_total", channel="twilio", reason="signature") == 1
    assert moved("intake_webhooks_rejected_total", channel="twilio", reason="unknown_tenant") == 1
    assert moved("intake_webhooks_received_total", channel="telegram") == 0


def test_pipeline_figures_move_from_webhook_to_contact(app: FastAPI, db: Database) -> None:
    """Accepting grows the queue; ingesting empties it and moves ingested and contacts created."""
    client = TestClient(app)
    tenant = make_tenant(db, **DEMO_SECRETS)
    before = scrape(client)
    for sample in SAMPLES:
        assert post_sample(client, tenant.id, sample) == 200, sample["note"]
    accepted = scrape(client)
    result = drain(db, tenant.id)
    ingested = scrape(client)

    new_messages = sum(
        value(accepted, "intake_messages_accepted_total", channel=c)
        - value(before, "intake_messages_accepted_total", channel=c)
        for c in ("twilio", "whatsapp", "telegram", "email")
    )
    assert new_messages == result.handled == 8
    assert (
        value(accepted, "intake_messages_duplicate_total", channel="whatsapp")
        - value(before, "intake_messages_duplicate_total", channel="whatsapp")
        == 1
    )
    assert (
        value(accepted, "intake_queue_depth") - value(before, "intake_queue_depth") == new_messages
    )
    assert value(accepted, "intake_queue_oldest_age_seconds") >= 0.0
    assert value(ingested, "intake_queue_depth") == value(before, "intake_queue_depth")

    def grew(name: str, **labels: str) -> float:
        return value(ingested, name, **labels) - value(accepted, name, **labels)

    assert {
        c: grew("intake_messages_ingested_total", channel=c)
        for c in ("sms", "whatsapp", "telegram", "email")
    } == {"sms": 1, "whatsapp": 2, "telegram": 2, "email": 3}
    assert (
        sum(
            grew("intake_contacts_created_total", source=s)
            for s in ("sms", "whatsapp", "telegram", "email")
        )
        == result.contacts_created
        == 5
    )
    assert grew("intake_contacts_created_total", source="sms") == 1


def test_merges_are_counted_by_how(app: FastAPI, db: Database) -> None:
    """An attested link that joins two contacts counts one attested merge; the API's count apart."""
    client = TestClient(app)
    tenant = make_tenant(db)
    store(db, tenant.id, inbound("sms", phone="+14155550500"), inbound("telegram", sender_id="5"))
    drain(db, tenant.id)
    before = scrape(client)
    store(db, tenant.id, inbound("telegram", sender_id="5", phone="+14155550500"))
    assert drain(db, tenant.id).handled == 1
    after = scrape(client)
    grew = {
        how: value(after, "intake_contacts_merged_total", how=how)
        - value(before, "intake_contacts_merged_total", how=how)
        for how in ("attested", "api")
    }
    assert grew == {"attested": 1, "api": 0}


def test_failed_messages_are_counted(app: FastAPI, db: Database) -> None:
    """A message parked as failed after its last attempt shows in intake_messages_failed."""
    client = TestClient(app)
    tenant = make_tenant(db)
    before = scrape(client)
    store(db, tenant.id, inbound("telegram"))  # no sender id, phone or email: cannot be a contact
    assert drain(db, tenant.id, max_attempts=1).failed == 1
    after = scrape(client)
    assert (
        value(after, "intake_messages_failed", channel="telegram")
        - value(before, "intake_messages_failed", channel="telegram")
    ) == 1


def test_queue_depth_and_oldest_age_are_exact(tmp_path: Path) -> None:
    """On a database of its own: depth counts pending rows, age is the oldest one's wait."""
    url = f"sqlite:///{tmp_path / 'intake.db'}"
    upgrade(url)
    db = Database(url)
    try:
        settings = Settings(database_url=url, broker_url=f"sqla+sqlite:///{tmp_path}/broker.db")
        client = TestClient(create_app(settings, db=db))
        tenant = make_tenant(db)
        assert value(scrape(client), "intake_queue_depth") == 0
        assert value(scrape(client), "intake_queue_oldest_age_seconds") == 0
        [old, _] = store(
            db,
            tenant.id,
            inbound("sms", phone="+14155550150"),
            inbound("sms", phone="+14155550151"),
        )
        with db.unit_of_work() as session:
            session.execute(
                update(Message)
                .where(Message.id == old)
                .values(accepted_at=utcnow() - timedelta(hours=2))
            )
        waiting = scrape(client)
        assert value(waiting, "intake_queue_depth") == 2
        assert 7200 <= value(waiting, "intake_queue_oldest_age_seconds") < 7200 + 60
        drain(db, tenant.id)
        done = scrape(client)
        assert value(done, "intake_queue_depth") == 0
        assert value(done, "intake_queue_oldest_age_seconds") == 0
        assert value(done, "intake_messages_ingested_total", channel="sms") == 2
        assert value(done, "intake_contacts_created_total", source="sms") == 2
    finally:
        db.dispose()


def test_scrape_with_the_database_down_still_serves_counters(tmp_path: Path) -> None:
    """/metrics answers 200 with this process's counters and intake_database_up 0."""
    settings = Settings(
        database_url="postgresql+psycopg://postgres@127.0.0.1:9/nowhere",
        broker_url=f"sqla+sqlite:///{tmp_path}/broker.db",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.post(f"/webhooks/{uuid.uuid4()}/telegram", content=b"{}")
        figures = scrape(client)
    assert value(figures, "intake_database_up") == 0
    assert value(figures, "intake_webhooks_received_total", channel="telegram") == 1
