"""GET /api/v1/contacts/{id}/messages: the contact's recorded messages."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from models.db import Database
from tests.api.conftest import CONTACTS, create, make_message
from tests.factories import TenantFixture

MESSAGE_FIELDS = {"id", "channel", "providerMessageId", "text", "media", "receivedAt", "createdAt"}


def test_messages_newest_first_with_fields(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """Handled messages of the contact, newest received first, each with the documented fields."""
    contact = create(client, tenant)
    contact_id = uuid.UUID(contact["id"])
    base = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    old = make_message(db, tenant.id, contact_id, received_at=base, body="first")
    new = make_message(
        db,
        tenant.id,
        contact_id,
        received_at=base + timedelta(minutes=5),
        body="second",
        channel="whatsapp",
        media=[{"kind": "image", "mime_type": "image/jpeg"}],
    )
    response = client.get(f"{CONTACTS}/{contact['id']}/messages", headers=tenant.auth)
    assert response.status_code == 200
    body = response.json()
    assert [m["id"] for m in body["data"]] == [str(new), str(old)]
    assert body["pagination"] == {"page": 1, "limit": 20, "total": 2, "totalPages": 1}
    latest = body["data"][0]
    assert set(latest) == MESSAGE_FIELDS
    assert latest["text"] == "second"
    assert latest["channel"] == "whatsapp"
    assert latest["media"] == [{"kind": "image", "mime_type": "image/jpeg"}]
    assert latest["receivedAt"] == "2026-03-01T09:05:00.000000Z"
    assert latest["providerMessageId"].startswith("SM")


def test_messages_leave_out_unhandled_and_other_contacts(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """Pending or failed messages, and other contacts' messages, are not listed."""
    contact = create(client, tenant)
    other = create(client, tenant)
    mine = make_message(db, tenant.id, uuid.UUID(contact["id"]))
    make_message(db, tenant.id, uuid.UUID(contact["id"]), state="pending")
    make_message(db, tenant.id, uuid.UUID(contact["id"]), state="failed")
    make_message(db, tenant.id, uuid.UUID(other["id"]))
    data = client.get(f"{CONTACTS}/{contact['id']}/messages", headers=tenant.auth).json()["data"]
    assert [m["id"] for m in data] == [str(mine)]


def test_messages_paginate_like_the_list(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """page and limit work as on the contact list, past the end included, limit clamped."""
    contact = create(client, tenant)
    for _ in range(3):
        make_message(db, tenant.id, uuid.UUID(contact["id"]))
    url = f"{CONTACTS}/{contact['id']}/messages"
    page = client.get(url, params={"limit": 2, "page": 2}, headers=tenant.auth).json()
    assert page["pagination"] == {"page": 2, "limit": 2, "total": 3, "totalPages": 2}
    assert len(page["data"]) == 1
    past = client.get(url, params={"page": 9}, headers=tenant.auth)
    assert past.status_code == 200
    assert past.json()["data"] == []
    clamped = client.get(url, params={"limit": 5000}, headers=tenant.auth).json()
    assert clamped["pagination"]["limit"] == 100
    assert client.get(url, params={"limit": 0}, headers=tenant.auth).status_code == 400


def test_messages_of_unknown_contact_is_404(client: TestClient, tenant: TenantFixture) -> None:
    """Messages of an id that names no contact (or is malformed) are a 404."""
    for contact_id in (str(uuid.uuid4()), "nope"):
        response = client.get(f"{CONTACTS}/{contact_id}/messages", headers=tenant.auth)
        assert response.status_code == 404
