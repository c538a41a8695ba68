"""The shared WhatsApp route `/webhooks/whatsapp`, on SQLite and PostgreSQL.

Notifications are signed as Meta signs them, with the operator's app secret; the database and
the queue are real. Routing is checked by where the rows land: the tenant that registered the
change's phone number id, and never another.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError

from api.app import create_app
from api.whatsapp_shared import PhoneNumberRoutes
from intake.settings import Settings
from models.db import Database
from models.migrate import upgrade
from models.schema import Message, UnroutedWhatsAppChange
from tests.api.test_webhooks import wakeups
from tests.api.webhook_payloads import SECRETS, signed, unique_digits
from tests.api.whatsapp_shared_payloads import (
    APP_SECRET,
    PATH,
    VERIFY_TOKEN,
    message_change,
    notification,
    post_shared,
    register,
    sign,
    status_change,
    unique_phone_number_id,
    wamid_of,
)
from tests.factories import TenantFixture, make_tenant
from worker.celery_app import make_celery
from worker.dispatch import Dispatcher
from worker.unrouted import UnroutableChangeError, list_unrouted, replay_unrouted

# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def settings(db: Database, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """The operator's Meta app configured; SQLite with the embedded broker, PostgreSQL Redis."""
    operator = {"whatsapp_app_secret": APP_SECRET, "whatsapp_verify_token": VERIFY_TOKEN}
    if db.is_sqlite:
        return Settings(
            database_url=db.url, broker_url=f"sqla+sqlite:///{tmp_path}/broker.db", **operator
        )
    redis_url: str = request.getfixturevalue("redis_url")
    return Settings(database_url=db.url, broker_url=redis_url, redis_url=redis_url, **operator)


@pytest.fixture
def app(db: Database, settings: Settings) -> FastAPI:
    return create_app(settings, db=db)


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def tenant(db: Database) -> TenantFixture:
    return make_tenant(db, **SECRETS)


@pytest.fixture
def other_tenant(db: Database) -> TenantFixture:
    return make_tenant(db, **SECRETS)


def stored(db: Database, tenant_id: uuid.UUID) -> list[Message]:
    with db.sessions() as session:
        return list(session.scalars(select(Message).where(Message.tenant_id == tenant_id)))


def wamids(db: Database, tenant_id: uuid.UUID) -> set[str]:
    return {m.provider_message_id for m in stored(db, tenant_id)}


def unrouted_rows(db: Database, phone_number_id: str) -> list[UnroutedWhatsAppChange]:
    with db.sessions() as session:
        return list(
            session.scalars(
                select(UnroutedWhatsAppChange).where(
                    UnroutedWhatsAppChange.phone_number_id == phone_number_id
                )
            )
        )


def metric(client: TestClient, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def dispatcher_for(settings: Settings) -> Dispatcher:
    return Dispatcher(settings, make_celery(settings))


# --- configuration and verification -----------------------------------------------------------


def test_unconfigured_shared_route_is_404_and_stores_nothing(
    db: Database, tenant: TenantFixture, tmp_path: Path
) -> None:
    """Without the operator's app secret and verify token both shared routes answer 404."""
    phone_number_id = unique_phone_number_id()
    register(db, tenant.id, phone_number_id)
    bare = Settings(database_url=db.url, broker_url=f"sqla+sqlite:///{tmp_path}/broker.db")
    client = TestClient(create_app(bare, db=db), raise_server_exceptions=False)
    query = {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "42"}
    got = client.get(PATH, params=query)
    posted = post_shared(client, notification([message_change(phone_number_id)]), secret="")
    assert (got.status_code, posted.status_code) == (404, 404)
    assert posted.headers["content-type"] == "application/problem+json"
    assert stored(db, tenant.id) == []
    assert unrouted_rows(db, phone_number_id) == []


def test_subscription_check_echoes_the_challenge_for_the_operator_token(
    client: TestClient,
) -> None:
    """Meta's GET with the operator's verify token gets the challenge; a tenant's token 403."""
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "8841"}
    response = client.get(PATH, params=query)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "8841"
    tenant_token = {**query, "hub.verify_token": SECRETS["whatsapp_verify_token"]}
    assert client.get(PATH, params=tenant_token).status_code == 403
    assert metric(
        client, "intake_webhooks_rejected_total", channel="whatsapp", reason="signature"
    ) == (1.0)


@pytest.mark.parametrize("secret", ["wrong", SECRETS["whatsapp_app_secret"], None])
def test_bad_signature_is_403_and_stores_nothing(
    client: TestClient,
    db: Database,
    tenant: TenantFixture,
    caplog: pytest.LogCaptureFixture,
    secret: str | None,
) -> None:
    """Signed with anything but the operator's app secret (a tenant's too) or unsigned: 403."""
    registered, unregistered = unique_phone_number_id(), unique_phone_number_id()
    register(db, tenant.id, registered)
    payload = notification([message_change(registered), message_change(unregistered)])
    body = json.dumps(payload).encode()
    headers = sign(body, secret) if secret else {"content-type": "application/json"}
    with caplog.at_level(logging.WARNING, logger="intake.webhooks"):
        response = client.post(PATH, content=body, headers=headers)
    assert response.status_code == 403, response.text
    assert stored(db, tenant.id) == []
    assert unrouted_rows(db, unregistered) == []
    assert metric(
        client, "intake_webhooks_rejected_total", channel="whatsapp", reason="signature"
    ) == (1.0)
    assert [r.getMessage() for r in caplog.records] == ["webhook.rejected"]


def test_malformed_notification_is_400_and_keeps_nothing(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """One malformed change refuses the whole notification: nothing routed, nothing kept."""
    registered, unregistered = unique_phone_number_id(), unique_phone_number_id()
    register(db, tenant.id, registered)
    broken = message_change(unregistered)
    broken["value"]["messages"] = "not a list"
    payload = notification([message_change(registered), message_change(unregistered), broken])
    assert post_shared(client, payload).status_code == 400
    assert post_shared(client, {"object": "whatsapp_business_account"}).status_code == 400
    body = b"{not json"
    assert client.post(PATH, content=body, headers=sign(body)).status_code == 400
    assert stored(db, tenant.id) == []
    assert unrouted_rows(db, unregistered) == []


# --- routing ----------------------------------------------------------------------------------


def test_change_lands_only_in_the_tenant_that_registered_its_number(
    client: TestClient,
    db: Database,
    settings: Settings,
    tenant: TenantFixture,
    other_tenant: TenantFixture,
) -> None:
    """A change for tenant A's number is A's pending message, never B's; a redelivery adds none."""
    mine, theirs = unique_phone_number_id(), unique_phone_number_id()
    register(db, tenant.id, mine)
    register(db, other_tenant.id, theirs)
    phone = f"+1415{unique_digits(7)}"
    change = message_change(mine, phone=phone)
    payload = notification([change])
    response = post_shared(client, payload)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    [row] = stored(db, tenant.id)
    assert (row.provider_message_id, row.channel, row.state) == (
        wamid_of(change),
        "whatsapp",
        "pending",
    )
    assert row.payload["phone"] == phone
    assert stored(db, other_tenant.id) == []
    assert client.app.state.accept_batcher.waker.wait_idle(10)  # wake-ups go after the answer
    assert (wakeups(settings, tenant.id), wakeups(settings, other_tenant.id)) == (1, 0)
    assert post_shared(client, payload).status_code == 200
    assert [r.id for r in stored(db, tenant.id)] == [row.id]
    assert stored(db, other_tenant.id) == []
    assert metric(client, "intake_messages_accepted_total", channel="whatsapp") == 1.0
    assert metric(client, "intake_messages_duplicate_total", channel="whatsapp") == 1.0


def test_one_notification_for_two_tenants_lands_each_in_its_own(
    client: TestClient,
    db: Database,
    tenant: TenantFixture,
    other_tenant: TenantFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Changes for two tenants' numbers in one POST: each tenant gets exactly its own."""
    first_a, second_a, only_b = (unique_phone_number_id() for _ in range(3))
    register(db, tenant.id, first_a, second_a)
    register(db, other_tenant.id, only_b)
    a1, a2, b1 = message_change(first_a), message_change(second_a), message_change(only_b)
    payload = notification([a1, b1], [a2, status_change(only_b)])
    with caplog.at_level(logging.INFO, logger="intake.webhooks"):
        assert post_shared(client, payload).status_code == 200
    assert wamids(db, tenant.id) == {wamid_of(a1), wamid_of(a2)}
    assert wamids(db, other_tenant.id) == {wamid_of(b1)}
    accepted = {
        getattr(r, "tenant_id", None): getattr(r, "messages", None)
        for r in caplog.records
        if r.getMessage() == "webhook.accepted"
    }
    assert accepted == {str(tenant.id): 2, str(other_tenant.id): 1}
    assert (
        metric(
            client, "intake_webhooks_ignored_total", channel="whatsapp", reason="status callback"
        )
        == 1.0
    )


def test_per_tenant_route_is_unchanged_beside_the_shared_one(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """`/webhooks/{tenant}/whatsapp` still verifies with the tenant's own app secret."""
    change = message_change(unique_phone_number_id())
    request = signed(
        "whatsapp", notification([change]), tenant_id=tenant.id, base_url="http://testserver"
    )
    response = client.post(request.path, content=request.body, headers=request.headers)
    assert response.status_code == 200, response.text
    assert wamids(db, tenant.id) == {wamid_of(change)}


# --- unrouted ---------------------------------------------------------------------------------


def test_unrouted_change_is_kept_once_counted_and_answered_200(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """An unregistered number's change is 200, kept once however often resent, counted, listed."""
    unregistered = unique_phone_number_id()
    change = message_change(unregistered)
    change["value"]["messages"].append({**change["value"]["messages"][0], "id": "wamid.two"})
    payload = notification([change, status_change(unregistered)])
    waiting_before = metric(client, "intake_whatsapp_unrouted_changes")
    assert post_shared(client, payload).status_code == 200
    assert post_shared(client, payload).status_code == 200  # Meta's redelivery
    [row] = unrouted_rows(db, unregistered)  # the status is nobody's and not kept
    assert (row.message_count, row.routed_at, row.change) == (2, None, change)
    assert stored(db, tenant.id) == []
    assert (
        metric(client, "intake_webhooks_ignored_total", channel="whatsapp", reason="unrouted")
        == 2.0
    )
    assert metric(client, "intake_whatsapp_unrouted_changes") == waiting_before + 1
    [listed] = [e for e in list_unrouted(db) if e.id == row.id]
    assert (listed.phone_number_id, listed.message_count) == (unregistered, 2)
    assert f"phone_number_id={unregistered}" in listed.line()


def test_unrouted_change_is_replayed_to_the_tenant_that_registers_its_number(
    client: TestClient,
    db: Database,
    settings: Settings,
    tenant: TenantFixture,
    other_tenant: TenantFixture,
) -> None:
    """Replayed once its number is registered, a change lands in that tenant alone, and once."""
    number = unique_phone_number_id()
    change = message_change(number)
    assert post_shared(client, notification([change])).status_code == 200
    [row] = unrouted_rows(db, number)
    waiting = metric(client, "intake_whatsapp_unrouted_changes")
    with pytest.raises(UnroutableChangeError, match=f"no tenant has registered.*{number}"):
        replay_unrouted(db, settings, change_ids=[row.id], dispatcher=dispatcher_for(settings))
    assert unrouted_rows(db, number)[0].routed_at is None

    register(db, tenant.id, number)
    new = replay_unrouted(db, settings, change_ids=[row.id], dispatcher=dispatcher_for(settings))
    assert new == 1
    assert wakeups(settings, tenant.id) == 1
    [message] = stored(db, tenant.id)
    assert (message.provider_message_id, message.state) == (wamid_of(change), "pending")
    assert stored(db, other_tenant.id) == []
    [routed] = unrouted_rows(db, number)
    assert (routed.routed_tenant_id, routed.routed_at is not None) == (tenant.id, True)
    assert row.id not in {e.id for e in list_unrouted(db)}
    assert metric(client, "intake_whatsapp_unrouted_changes") == waiting - 1
    with pytest.raises(UnroutableChangeError, match="already replayed"):
        replay_unrouted(db, settings, change_ids=[row.id], dispatcher=dispatcher_for(settings))
    assert len(stored(db, tenant.id)) == 1


def test_replay_after_the_same_message_came_routed_stores_no_copy(
    client: TestClient, db: Database, settings: Settings, tenant: TenantFixture
) -> None:
    """A message kept unrouted, then resent once the number is registered, is stored once."""
    number = unique_phone_number_id()
    payload = notification([message_change(number)])
    assert post_shared(client, payload).status_code == 200
    [row] = unrouted_rows(db, number)
    register(db, tenant.id, number)
    # Another app process, whose cache never saw the number unregistered.
    fresh = TestClient(create_app(settings, db=db), raise_server_exceptions=False)
    assert post_shared(fresh, payload).status_code == 200
    assert len(stored(db, tenant.id)) == 1
    new = replay_unrouted(db, settings, change_ids=[row.id], dispatcher=dispatcher_for(settings))
    assert new == 0
    assert len(stored(db, tenant.id)) == 1


def test_a_known_number_keeps_its_tenant_while_the_database_fails(
    tenant_in_sqlite: tuple[Database, uuid.UUID],
) -> None:
    """A number read before keeps its tenant while the database fails; an unread one fails."""
    db, tenant_id = tenant_in_sqlite
    number = unique_phone_number_id()
    register(db, tenant_id, number)
    routes = PhoneNumberRoutes(db, ttl_seconds=0.0)  # every read goes to the database
    assert routes.get([number]) == {number: tenant_id}
    with db.engine.begin() as connection:
        connection.execute(text("DROP TABLE whatsapp_phone_numbers"))
    assert routes.get([number]) == {number: tenant_id}
    with pytest.raises(SQLAlchemyError):
        routes.get([number, unique_phone_number_id()])


@pytest.fixture
def tenant_in_sqlite(tmp_path: Path) -> Iterator[tuple[Database, uuid.UUID]]:
    """A database of this test's own, since the test breaks it."""
    url = f"sqlite:///{tmp_path / 'own.db'}"
    upgrade(url)
    db = Database(url)
    yield db, make_tenant(db).id
    db.dispose()


def test_unrouted_change_is_kept_as_sent_even_when_nothing_in_it_is_a_message_today(
    client: TestClient, db: Database, settings: Settings, tenant: TenantFixture
) -> None:
    """Messages today's parser skips are kept raw, so a replay reads them with its own."""
    number = unique_phone_number_id()
    change = message_change(number)
    message = change["value"]["messages"][0]
    message["type"] = "reaction"
    message["reaction"] = {"message_id": "wamid.earlier", "emoji": "\U0001f44d"}
    del message["text"]
    assert post_shared(client, notification([change])).status_code == 200
    [row] = unrouted_rows(db, number)
    assert (row.message_count, row.change) == (0, change)
    register(db, tenant.id, number)
    new = replay_unrouted(db, settings, change_ids=[row.id], dispatcher=dispatcher_for(settings))
    assert new == 0
    assert stored(db, tenant.id) == []
    assert unrouted_rows(db, number)[0].routed_tenant_id == tenant.id
