"""Idempotency-Key on create: replay, body mismatch, in-flight, per tenant, 24 hours."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select, update
from sqlalchemy.exc import OperationalError

from models.db import Database
from models.idempotency import request_fingerprint
from models.schema import Contact, IdempotencyKey, utcnow
from tests.api.conftest import CONTACTS, unique_email, unique_phone
from tests.factories import TenantFixture


def post(
    client: TestClient, tenant: TenantFixture, key: str, body: dict[str, object]
) -> httpx.Response:
    return client.post(CONTACTS, json=body, headers={**tenant.auth, "Idempotency-Key": key})


def count_contacts(db: Database, tenant: TenantFixture) -> int:
    with db.sessions() as session:
        return (
            session.scalar(
                select(func.count()).select_from(Contact).where(Contact.tenant_id == tenant.id)
            )
            or 0
        )


def test_same_key_same_body_replays_first_response(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """A retry replays the first 201 byte for byte, marked Idempotent-Replayed, creating once."""
    body = {"name": "Jane", "phone": unique_phone()}
    first = post(client, tenant, "key-1", body)
    second = post(client, tenant, "key-1", dict(reversed(list(body.items()))))
    assert first.status_code == second.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert second.headers["location"] == first.headers["location"]
    assert count_contacts(db, tenant) == 1


def test_same_key_different_body_is_422(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """Reusing a key for another body is a 422 problem and creates nothing."""
    assert post(client, tenant, "key-2", {"name": "A", "email": unique_email()}).status_code == 201
    response = post(client, tenant, "key-2", {"name": "B", "email": unique_email()})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"
    assert count_contacts(db, tenant) == 1


def test_error_responses_are_replayed_too(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """A 409 stored for a key is replayed, even after the conflict is gone."""
    phone = unique_phone()
    existing = post(client, tenant, "first", {"name": "A", "phone": phone}).json()
    conflict = post(client, tenant, "second", {"name": "B", "phone": phone})
    assert conflict.status_code == 409
    client.delete(f"{CONTACTS}/{existing['id']}", headers=tenant.auth)
    replay = post(client, tenant, "second", {"name": "B", "phone": phone})
    assert replay.status_code == 409
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["content-type"] == "application/problem+json"
    assert replay.json() == conflict.json()


def test_in_flight_key_is_409(client: TestClient, db: Database, tenant: TenantFixture) -> None:
    """While the first request with a key runs (its marker has no response yet), a retry is 409."""
    body = {"name": "Jane", "email": unique_email()}
    with db.unit_of_work() as session:
        now = utcnow()
        session.add(
            IdempotencyKey(
                tenant_id=tenant.id,
                key="busy",
                request_hash=request_fingerprint(body),
                created_at=now,
                expires_at=now + timedelta(hours=24),
            )
        )
    response = post(client, tenant, "busy", body)
    assert response.status_code == 409
    assert response.headers["retry-after"] == "1"
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"
    assert count_contacts(db, tenant) == 0


def test_abandoned_in_flight_key_is_taken_over(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """A marker left by a request that died over a minute ago no longer blocks the key."""
    body = {"name": "Jane", "email": unique_email()}
    with db.unit_of_work() as session:
        then = utcnow() - timedelta(minutes=5)
        session.add(
            IdempotencyKey(
                tenant_id=tenant.id,
                key="dead",
                request_hash=request_fingerprint(body),
                created_at=then,
                expires_at=then + timedelta(hours=24),
            )
        )
    assert post(client, tenant, "dead", body).status_code == 201
    assert count_contacts(db, tenant) == 1


def test_keys_are_per_tenant(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    """The same key in two tenants is two keys: each creates its own contact."""
    body = {"name": "Jane", "phone": unique_phone()}
    mine = post(client, tenant, "shared", body)
    theirs = post(client, other_tenant, "shared", body)
    assert mine.status_code == theirs.status_code == 201
    assert "idempotent-replayed" not in theirs.headers
    assert mine.json()["id"] != theirs.json()["id"]


def test_expired_key_is_reusable(client: TestClient, db: Database, tenant: TenantFixture) -> None:
    """After 24 hours a key is forgotten: the same key runs the request afresh."""
    first = post(client, tenant, "old", {"name": "A", "email": unique_email()})
    assert first.status_code == 201
    with db.unit_of_work() as session:
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.tenant_id == tenant.id, IdempotencyKey.key == "old")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    again = post(client, tenant, "old", {"name": "B", "email": unique_email()})
    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"]


def test_key_is_kept_24_hours(client: TestClient, db: Database, tenant: TenantFixture) -> None:
    """The stored key expires 24 hours after its first use."""
    post(client, tenant, "ttl", {"name": "A", "email": unique_email()})
    with db.sessions() as session:
        row = session.get(IdempotencyKey, (tenant.id, "ttl"))
        assert row is not None
        assert row.expires_at - row.created_at == timedelta(hours=24)


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_malformed_key_is_400(client: TestClient, tenant: TenantFixture, key: str) -> None:
    """An empty or over-long Idempotency-Key is a 400 naming the header."""
    response = post(client, tenant, key, {"name": "A", "email": unique_email()})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"


def test_create_without_key_is_not_idempotent(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """Without a key, two creates with different emails make two contacts."""
    for _ in range(2):
        response = client.post(
            CONTACTS, json={"name": "A", "email": unique_email()}, headers=tenant.auth
        )
        assert response.status_code == 201
    assert count_contacts(db, tenant) == 2


def test_a_first_request_that_ended_in_5xx_is_not_kept(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """A create whose database failed (503) leaves no stored answer: the retry with the same
    key runs again and creates the contact."""
    failures = []

    def fail_once(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO contacts") and not failures:
            failures.append(statement)
            raise OperationalError(statement, {}, Exception("server closed the connection"))

    body = {"name": "Jane", "email": unique_email()}
    event.listen(db.engine, "before_cursor_execute", fail_once)
    try:
        first = post(client, tenant, "after-outage", body)
    finally:
        event.remove(db.engine, "before_cursor_execute", fail_once)
    assert first.status_code == 503, first.text
    assert count_contacts(db, tenant) == 0
    retry = post(client, tenant, "after-outage", body)
    assert retry.status_code == 201, retry.text
    assert "idempotent-replayed" not in retry.headers
    assert count_contacts(db, tenant) == 1
