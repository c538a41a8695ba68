"""No route reads, changes or reveals another tenant's contacts."""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from fastapi.testclient import TestClient

from models.db import Database
from tests.api.conftest import CONTACTS, create, make_message, unique_email, unique_phone
from tests.factories import TenantFixture


def test_every_route_refuses_another_tenants_contact(
    client: TestClient, db: Database, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    """Get, patch, delete and messages on another tenant's id are 404, and nothing changes."""
    theirs = create(
        client, other_tenant, name="Secret Person", phone=unique_phone(), email=unique_email()
    )
    make_message(db, other_tenant.id, uuid.UUID(theirs["id"]), body="private")
    url = f"{CONTACTS}/{theirs['id']}"

    responses = [
        client.get(url, headers=tenant.auth),
        client.patch(url, json={"name": "Hijacked"}, headers=tenant.auth),
        client.delete(url, headers=tenant.auth),
        client.get(f"{url}/messages", headers=tenant.auth),
    ]
    assert [r.status_code for r in responses] == [404, 404, 404, 404]
    assert all("Secret" not in r.text and "private" not in r.text for r in responses)
    assert client.get(url, headers=other_tenant.auth).json() == theirs
    messages = client.get(f"{url}/messages", headers=other_tenant.auth).json()
    assert messages["pagination"]["total"] == 1


def test_list_and_search_show_only_own_contacts(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    """The list, its total and every search only ever see the caller's contacts."""
    theirs = create(
        client, other_tenant, name="Zebediah Quux", phone="+12125550777", email="zeb@other.example"
    )
    mine = create(client, tenant, name="Mine Only")
    listed = client.get(CONTACTS, headers=tenant.auth).json()
    assert [c["id"] for c in listed["data"]] == [mine["id"]]
    assert listed["pagination"]["total"] == 1
    for term in ("Zebediah", "other.example", "+1212555077", "212-555-0777"):
        found = client.get(CONTACTS, params={"search": term}, headers=tenant.auth).json()
        assert found["data"] == [], term
        assert found["pagination"]["total"] == 0
    for params in ({"status": "prospect"}, {"role": "prospect"}):
        data = client.get(CONTACTS, params=params, headers=tenant.auth).json()["data"]
        assert theirs["id"] not in {c["id"] for c in data}


def test_same_phone_and_email_in_two_tenants_is_fine(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    """Duplicates are per tenant: no 409, and no id of the other tenant's contact leaks."""
    phone, email = unique_phone(), unique_email()
    theirs = create(client, other_tenant, phone=phone, email=email)
    response = client.post(
        CONTACTS, json={"name": "Me", "phone": phone, "email": email}, headers=tenant.auth
    )
    assert response.status_code == 201
    assert theirs["id"] not in response.text


def test_update_to_a_phone_used_in_another_tenant_is_fine(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    """A PATCH onto a phone another tenant uses succeeds: it is not a duplicate here."""
    phone = unique_phone()
    create(client, other_tenant, phone=phone)
    mine = create(client, tenant)
    response = client.patch(f"{CONTACTS}/{mine['id']}", json={"phone": phone}, headers=tenant.auth)
    assert response.status_code == 200


def test_idempotency_replay_never_crosses_tenants(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    """Another tenant's stored response for the same key is never replayed to me."""
    body = {"name": "Jane", "email": unique_email()}
    theirs = client.post(
        CONTACTS, json=body, headers={**other_tenant.auth, "Idempotency-Key": "k"}
    ).json()
    mine = client.post(CONTACTS, json=body, headers={**tenant.auth, "Idempotency-Key": "k"})
    assert mine.status_code == 201
    assert mine.json()["id"] != theirs["id"]


def test_every_contact_route_refuses_another_tenants_ids(
    app: FastAPI,
    client: TestClient,
    db: Database,
    tenant: TenantFixture,
    other_tenant: TenantFixture,
) -> None:
    """Every route under /contacts/{id}, given another tenant's live contact, merged-away contact
    or merge, is a 404 that reveals nothing and changes nothing; a new route fails this test
    until it is covered here."""
    theirs = create(client, other_tenant, name="Secret Live", phone=unique_phone())
    gone = create(client, other_tenant, name="Secret Gone", email=unique_email())
    merged = client.post(
        f"{CONTACTS}/{theirs['id']}/merge",
        json={"contactId": gone["id"]},
        headers=other_tenant.auth,
    )
    assert merged.status_code == 200
    make_message(db, other_tenant.id, uuid.UUID(theirs["id"]), body="private words")
    theirs_before = client.get(f"{CONTACTS}/{theirs['id']}", headers=other_tenant.auth).json()
    [record] = client.get(f"{CONTACTS}/{theirs['id']}/merges", headers=other_tenant.auth).json()[
        "data"
    ]
    mine = create(client, tenant, name="Mine", email=unique_email())
    foreign = [theirs["id"], gone["id"]]  # live, and merged away (resolves only for them)
    calls: dict[tuple[str, str], list[tuple[str, dict[str, str] | None]]] = {
        ("GET", "/{contact_id}"): [(f"/{i}", None) for i in foreign],
        ("PATCH", "/{contact_id}"): [(f"/{i}", {"name": "Hijacked"}) for i in foreign],
        ("DELETE", "/{contact_id}"): [(f"/{i}", None) for i in foreign],
        ("GET", "/{contact_id}/messages"): [(f"/{i}/messages", None) for i in foreign],
        ("GET", "/{contact_id}/identities"): [(f"/{i}/identities", None) for i in foreign],
        ("GET", "/{contact_id}/merges"): [(f"/{i}/merges", None) for i in foreign],
        ("POST", "/{contact_id}/merge"): [
            *((f"/{i}/merge", {"contactId": mine["id"]}) for i in foreign),
            *((f"/{mine['id']}/merge", {"contactId": i}) for i in foreign),
        ],
        ("POST", "/{contact_id}/merges/{merge_id}/undo"): [
            *((f"/{i}/merges/{record['id']}/undo", None) for i in foreign),
            (f"/{mine['id']}/merges/{record['id']}/undo", None),
        ],
    }
    # The routes as the published document lists them (what an outside client sees).
    routes = {
        (method.upper(), path.removeprefix(CONTACTS))
        for path, methods in app.openapi()["paths"].items()
        if path.startswith(f"{CONTACTS}/{{contact_id}}")
        for method in methods
    }
    assert routes == set(calls)
    for (method, _), requests in calls.items():
        for suffix, body in requests:
            response = client.request(method, f"{CONTACTS}{suffix}", json=body, headers=tenant.auth)
            assert response.status_code == 404, (method, suffix, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            for secret in ("Secret", "private", theirs["phone"], gone["email"], *foreign):
                assert secret not in response.text, (method, suffix)
    assert client.get(f"{CONTACTS}/{theirs['id']}", headers=other_tenant.auth).json() == (
        theirs_before
    )
    assert (
        client.get(f"{CONTACTS}/{gone['id']}", headers=other_tenant.auth).json()["id"]
        == (theirs["id"])
    )
    after = client.get(f"{CONTACTS}/{theirs['id']}/merges", headers=other_tenant.auth).json()
    assert after["data"] == [record]
    mine_after = client.get(f"{CONTACTS}/{mine['id']}", headers=tenant.auth).json()
    assert mine_after["name"] == "Mine"
    assert client.get(f"{CONTACTS}/{mine['id']}/merges", headers=tenant.auth).json()["data"] == []
