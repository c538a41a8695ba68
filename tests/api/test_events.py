"""The events feed and the webhook-endpoints API over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api.app import create_app
from intake.settings import Settings
from models.db import Database
from models.schema import Event, WebhookDelivery, utcnow
from models.webhook_endpoints import AttemptResult, fan_out, record_attempt
from tests.api.conftest import create
from tests.factories import TenantFixture, make_tenant
from worker.reconciler import prune_expired_events

EVENTS = "/api/v1/events"
ENDPOINTS = "/api/v1/webhook-endpoints"


@pytest.fixture
def private_app(db: Database) -> FastAPI:
    """The app with private addresses allowed, as in local development."""
    return create_app(Settings(database_url=db.url, events_allow_private=True), db=db)


@pytest.fixture
def private_client(private_app: FastAPI) -> TestClient:
    return TestClient(private_app)


def feed(client: TestClient, tenant: TenantFixture, **params: Any) -> dict[str, Any]:
    response = client.get(EVENTS, params=params, headers=tenant.auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_feed_lists_changes_in_order_with_the_event_shape(
    client: TestClient, tenant: TenantFixture
) -> None:
    """created, updated, deleted in sequence order, each `{id,type,sequence,createdAt,data}`."""
    contact = create(client, tenant)
    client.patch(
        f"/api/v1/contacts/{contact['id']}", json={"status": "renter"}, headers=tenant.auth
    )
    client.delete(f"/api/v1/contacts/{contact['id']}", headers=tenant.auth)
    body = feed(client, tenant)
    assert [e["type"] for e in body["data"]] == [
        "contact.created",
        "contact.updated",
        "contact.deleted",
    ]
    assert set(body["data"][0]) == {"id", "type", "sequence", "createdAt", "data"}
    assert [e["sequence"] for e in body["data"]] == [1, 2, 3]
    assert body["data"][1]["data"] == {"contactId": contact["id"], "changed": ["status"]}
    assert body["next"] == "3"


def test_cursor_pages_through_each_event_once(client: TestClient, tenant: TenantFixture) -> None:
    """Reading on from `next` in pages of 2 sees every event once, then an empty page."""
    for _ in range(5):
        create(client, tenant)
    seen: list[int] = []
    cursor = None
    for _ in range(4):
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["after"] = cursor
        body = feed(client, tenant, **params)
        seen += [e["sequence"] for e in body["data"]]
        cursor = body["next"]
    assert seen == [1, 2, 3, 4, 5]
    create(client, tenant)
    assert [e["sequence"] for e in feed(client, tenant, after=cursor)["data"]] == [6]


def test_type_filter_moves_the_cursor_past_other_types(
    client: TestClient, tenant: TenantFixture
) -> None:
    """`type=contact.deleted` returns only those, and `next` skips the rest it looked at."""
    contact = create(client, tenant)
    create(client, tenant)
    body = feed(client, tenant, type="contact.deleted")
    assert body["data"] == []
    assert body["next"] == "2"
    client.delete(f"/api/v1/contacts/{contact['id']}", headers=tenant.auth)
    later = feed(client, tenant, type="contact.deleted", after=body["next"])
    assert [e["type"] for e in later["data"]] == ["contact.deleted"]


def test_empty_after_reads_from_the_start(client: TestClient, tenant: TenantFixture) -> None:
    """`?after=&type=` (the parameters sent empty) is the first page, not a bad cursor."""
    create(client, tenant)
    body = feed(client, tenant, after="", type="")
    assert [e["type"] for e in body["data"]] == ["contact.created"]
    assert body["next"] == "1"


@pytest.mark.parametrize("cursor", ["abc", "-1", "99", "1.5"])
def test_unknown_cursor_is_400_saying_how_far_back(
    client: TestClient, tenant: TenantFixture, cursor: str
) -> None:
    """A cursor past the end or not a cursor at all: 400 problem with the feed's reach."""
    create(client, tenant)
    response = client.get(EVENTS, params={"after": cursor}, headers=tenant.auth)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["errors"][0]["field"] == "after"
    assert body["retentionDays"] == 30
    assert "30 days" in body["detail"]
    assert body["oldestCursor"] == "0"


def test_unknown_type_filter_is_400(client: TestClient, tenant: TenantFixture) -> None:
    """`type=contact.exploded` names no event type."""
    response = client.get(EVENTS, params={"type": "contact.exploded"}, headers=tenant.auth)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "type"


def test_retention_prunes_old_events_and_expires_their_cursors(
    db: Database, client: TestClient, tenant: TenantFixture
) -> None:
    """Events past retention go; a cursor before them is a 400, `oldestCursor` works."""
    for _ in range(3):
        create(client, tenant)
    with db.unit_of_work() as session:
        session.execute(
            update(Event)
            .where(Event.tenant_id == tenant.id, Event.sequence <= 2)
            .values(created_at=utcnow() - timedelta(days=31))
        )
    assert prune_expired_events(db, retention_days=30) >= 2
    assert [e["sequence"] for e in feed(client, tenant)["data"]] == [3]
    response = client.get(EVENTS, params={"after": "1"}, headers=tenant.auth)
    assert response.status_code == 400
    body = response.json()
    assert body["oldestCursor"] == "2"
    assert body["oldestSequence"] == 3
    assert [e["sequence"] for e in feed(client, tenant, after="2")["data"]] == [3]


def test_feed_is_tenant_scoped(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    """Another tenant's changes never show in the feed, and its cursors are unknown here."""
    create(client, other_tenant)
    create(client, other_tenant)
    assert feed(client, tenant)["data"] == []
    assert client.get(EVENTS, params={"after": "2"}, headers=tenant.auth).status_code == 400
    assert client.get(EVENTS).status_code == 401


def _endpoint(client: TestClient, tenant: TenantFixture, **fields: Any) -> dict[str, Any]:
    fields.setdefault("url", "http://127.0.0.1:9/hooks")
    response = client.post(ENDPOINTS, json=fields, headers=tenant.auth)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_endpoint_crud_shows_the_secret_once(
    private_client: TestClient, tenant: TenantFixture
) -> None:
    """Create answers 201 with a whsec_ secret; get, list and patch never show it."""
    client = private_client
    created = _endpoint(client, tenant, eventTypes=["contact.created"])
    assert created["secret"].startswith("whsec_")
    assert created["eventTypes"] == ["contact.created"]
    assert created["enabled"] is True
    one = client.get(f"{ENDPOINTS}/{created['id']}", headers=tenant.auth).json()
    assert "secret" not in one
    listed = client.get(ENDPOINTS, headers=tenant.auth).json()["data"]
    assert [e["id"] for e in listed] == [created["id"]]
    assert all("secret" not in e for e in listed)
    patched = client.patch(
        f"{ENDPOINTS}/{created['id']}",
        json={"enabled": False, "eventTypes": []},
        headers=tenant.auth,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["enabled"] is False
    assert "secret" not in patched.json()
    assert client.delete(f"{ENDPOINTS}/{created['id']}", headers=tenant.auth).status_code == 204
    assert client.get(f"{ENDPOINTS}/{created['id']}", headers=tenant.auth).status_code == 404


def test_rotate_secret_gives_a_new_one_with_overlap(
    private_client: TestClient, tenant: TenantFixture
) -> None:
    """rotate-secret: a different secret, and the old one's overlap ends in about 24 h."""
    created = _endpoint(private_client, tenant)
    response = private_client.post(
        f"{ENDPOINTS}/{created['id']}/rotate-secret", headers=tenant.auth
    )
    assert response.status_code == 200
    rotated = response.json()
    assert rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != created["secret"]
    assert rotated["previousSecretExpiresAt"] is not None


def test_endpoint_bodies_are_validated(private_client: TestClient, tenant: TenantFixture) -> None:
    """Unknown event types and unknown fields are 400 problems naming the field."""
    bad_type = private_client.post(
        ENDPOINTS, json={"url": "http://127.0.0.1/h", "eventTypes": ["nope"]}, headers=tenant.auth
    )
    assert bad_type.status_code == 400
    unknown = private_client.post(
        ENDPOINTS, json={"url": "http://127.0.0.1/h", "secret": "x"}, headers=tenant.auth
    )
    assert unknown.status_code == 400
    assert unknown.json()["errors"][0]["field"] == "secret"


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.215.14/hooks",  # public, but not https
        "https://127.0.0.1/hooks",
        "https://10.1.2.3/hooks",
        "https://192.168.0.1/hooks",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hooks",
        "https://[::ffff:127.0.0.1]/hooks",
        "https://[fd00:ec2::254]/hooks",
        "https://[fe80::1]/hooks",
        "https://[fc00::5]/hooks",
        "https://localhost/hooks",
        "https://user:pw@93.184.215.14/hooks",
    ],
)
def test_registration_refuses_private_and_plain_http_urls(
    client: TestClient, tenant: TenantFixture, url: str
) -> None:
    """Without INTAKE_EVENTS_ALLOW_PRIVATE: loopback, private, link-local, mapped, metadata,
    a name resolving to loopback, http and credentials are all 400 on `url`."""
    response = client.post(ENDPOINTS, json={"url": url}, headers=tenant.auth)
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["field"] == "url"


def test_patch_to_a_private_url_is_refused(client: TestClient, tenant: TenantFixture) -> None:
    """The check runs on PATCH too: a public endpoint cannot be pointed inward later."""
    created = _endpoint(client, tenant, url="https://93.184.215.14/hooks")
    response = client.patch(
        f"{ENDPOINTS}/{created['id']}", json={"url": "https://127.0.0.1/x"}, headers=tenant.auth
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "url"


def test_endpoints_are_tenant_scoped(
    private_client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """Every endpoint route answers 404 for another tenant's endpoint and never lists it."""
    client = private_client
    other = make_tenant(db)
    theirs = _endpoint(client, other)
    base = f"{ENDPOINTS}/{theirs['id']}"
    assert client.get(ENDPOINTS, headers=tenant.auth).json()["data"] == []
    assert client.get(base, headers=tenant.auth).status_code == 404
    assert client.patch(base, json={"enabled": False}, headers=tenant.auth).status_code == 404
    assert client.post(f"{base}/rotate-secret", headers=tenant.auth).status_code == 404
    assert client.get(f"{base}/deliveries", headers=tenant.auth).status_code == 404
    redeliver = f"{base}/deliveries/00000000-0000-0000-0000-000000000000/redeliver"
    assert client.post(redeliver, headers=tenant.auth).status_code == 404
    assert client.delete(base, headers=tenant.auth).status_code == 404
    assert client.get(base, headers=other.auth).json()["enabled"] is True
    assert client.get(f"{ENDPOINTS}/not-an-id", headers=tenant.auth).status_code == 404


def test_deliveries_list_every_attempt_and_redeliver_resets(
    private_client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """GET …/deliveries shows each attempt's status and latency; redeliver makes it pending."""
    client = private_client
    created = _endpoint(client, tenant)
    endpoint_id = uuid.UUID(created["id"])
    create(client, tenant)
    with db.unit_of_work() as session:
        fan_out(session, endpoint_id=endpoint_id)
    with db.unit_of_work() as session:
        delivery = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
        ).one()
        for status in (500, 200):
            record_attempt(
                session,
                delivery_id=delivery.id,
                result=AttemptResult(
                    "succeeded" if status == 200 else "http_error", 42, status_code=status
                ),
                now=utcnow(),
            )
    base = f"{ENDPOINTS}/{created['id']}/deliveries"
    listed = client.get(base, headers=tenant.auth)
    assert listed.status_code == 200, listed.text
    (item,) = listed.json()["data"]
    assert item["state"] == "succeeded"
    assert [a["statusCode"] for a in item["attempts"]] == [500, 200]
    assert [a["latencyMs"] for a in item["attempts"]] == [42, 42]
    again = client.post(f"{base}/{item['id']}/redeliver", headers=tenant.auth)
    assert again.status_code == 202, again.text
    assert again.json()["state"] == "pending"
    assert [a["statusCode"] for a in again.json()["attempts"]] == [500, 200]
    unknown = client.post(f"{base}/{uuid.uuid4()}/redeliver", headers=tenant.auth)
    assert unknown.status_code == 404


def test_metrics_count_delivery_attempts_by_outcome(
    private_client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """/metrics carries intake_event_delivery_attempts_total by outcome."""
    created = _endpoint(private_client, tenant)
    create(private_client, tenant)
    with db.unit_of_work() as session:
        fan_out(session, endpoint_id=uuid.UUID(created["id"]))
    with db.unit_of_work() as session:
        delivery = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.endpoint_id == uuid.UUID(created["id"]))
        ).one()
        record_attempt(
            session,
            delivery_id=delivery.id,
            result=AttemptResult("timeout", 10_000, error="timed out"),
            now=utcnow(),
        )
    text = private_client.get("/metrics").text
    assert 'intake_event_delivery_attempts_total{outcome="timeout"}' in text
    assert 'intake_event_deliveries{state="pending"}' in text
