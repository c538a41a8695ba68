"""Merges through the API: the merge, identities and merges routes, merged-id resolution, undo."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from models.db import Database
from models.schema import Contact, ContactIdentity, ContactMerge
from tests.api.conftest import CONTACTS, create, make_message, unique_email, unique_phone
from tests.factories import TenantFixture
from tests.worker.helpers import inbound, ingest


def merge(client: TestClient, tenant: TenantFixture, survivor: str, other: str) -> Any:
    response = client.post(
        f"{CONTACTS}/{survivor}/merge", json={"contactId": other}, headers=tenant.auth
    )
    assert response.status_code == 200, response.text
    return response.json()


def identities(client: TestClient, tenant: TenantFixture, contact_id: str) -> set[tuple[str, str]]:
    response = client.get(f"{CONTACTS}/{contact_id}/identities", headers=tenant.auth)
    assert response.status_code == 200, response.text
    return {(i["kind"], i["value"]) for i in response.json()["data"]}


def message_ids(client: TestClient, tenant: TenantFixture, contact_id: str) -> set[str]:
    response = client.get(f"{CONTACTS}/{contact_id}/messages", headers=tenant.auth)
    assert response.status_code == 200, response.text
    return {m["id"] for m in response.json()["data"]}


def test_merge_moves_identities_and_messages_and_fills_gaps(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """The path's contact survives with both's identities and messages, gaining what it lacks."""
    phone, email = unique_phone(), unique_email()
    survivor = create(client, tenant, name="Ann", email=email)
    other = create(client, tenant, name="Ann B", phone=phone, referralSource="zillow")
    kept = make_message(db, tenant.id, uuid.UUID(survivor["id"]))
    moved = make_message(db, tenant.id, uuid.UUID(other["id"]))
    body = merge(client, tenant, survivor["id"], other["id"])
    assert body["id"] == survivor["id"]
    assert (body["name"], body["email"], body["phone"]) == ("Ann", email, phone)
    assert body["referralSource"] == "zillow"
    assert identities(client, tenant, survivor["id"]) == {("email", email), ("phone", phone)}
    assert message_ids(client, tenant, survivor["id"]) == {str(kept), str(moved)}
    listed = client.get(CONTACTS, headers=tenant.auth).json()
    assert [c["id"] for c in listed["data"]] == [survivor["id"]]
    [record] = client.get(f"{CONTACTS}/{survivor['id']}/merges", headers=tenant.auth).json()["data"]
    assert (record["mergedContactId"], record["reason"], record["undoneAt"]) == (
        other["id"],
        "api",
        None,
    )
    with db.sessions() as session:
        stored = session.get(ContactMerge, uuid.UUID(record["id"]))
        assert stored is not None
        held = session.scalars(
            select(ContactIdentity.id).where(ContactIdentity.contact_id == stored.survivor_id)
        )
        assert (stored.kept, stored.message_ids) == ({"name": "Ann B"}, [str(moved)])
        assert set(stored.gained) == {"phone", "referral_source"}
        assert len(stored.identity_ids) == 1
        assert stored.identity_ids[0] in {str(i) for i in held}


def test_status_and_role_taken_only_over_defaults(
    client: TestClient, tenant: TenantFixture
) -> None:
    """Status and role come from the merged contact only where the survivor's are defaults."""
    defaults = create(client, tenant, name="Def")
    applicant = create(client, tenant, name="App", status="applicant", role="tenant")
    body = merge(client, tenant, defaults["id"], applicant["id"])
    assert (body["status"], body["role"]) == ("applicant", "tenant")
    assert body["appliedAt"] == applicant["appliedAt"]
    renter = create(client, tenant, name="Ren", status="renter", role="landlord")
    other = create(client, tenant, name="Oth", status="scheduled", role="vendor")
    body = merge(client, tenant, renter["id"], other["id"])
    assert (body["status"], body["role"], body["name"]) == ("renter", "landlord", "Ren")


def test_merge_refuses_itself_unknown_and_other_tenants(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    """Merging into itself is a 400; an unknown id or another tenant's contact is a 404."""
    mine = create(client, tenant)
    theirs = create(client, other_tenant, name="Secret")
    url = f"{CONTACTS}/{mine['id']}/merge"
    same = client.post(url, json={"contactId": mine["id"]}, headers=tenant.auth)
    assert same.status_code == 400
    assert same.headers["content-type"] == "application/problem+json"
    assert same.json()["errors"] == [{"field": "contactId", "message": "is the contact itself"}]
    for other in (str(uuid.uuid4()), theirs["id"]):
        response = client.post(url, json={"contactId": other}, headers=tenant.auth)
        assert response.status_code == 404
    crossed = client.post(
        f"{CONTACTS}/{theirs['id']}/merge", json={"contactId": mine["id"]}, headers=tenant.auth
    )
    assert crossed.status_code == 404
    assert "Secret" not in crossed.text
    assert client.get(f"{CONTACTS}/{theirs['id']}", headers=other_tenant.auth).status_code == 200
    assert client.get(f"{CONTACTS}/{mine['id']}", headers=tenant.auth).status_code == 200


def test_merged_id_resolves_to_its_survivor_on_every_route(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """Every contact route given a merged-away id acts on, and answers with, its survivor."""
    survivor = create(client, tenant, name="Sur")
    other = create(client, tenant, name="Gone")
    make_message(db, tenant.id, uuid.UUID(other["id"]))
    merge(client, tenant, survivor["id"], other["id"])
    url = f"{CONTACTS}/{other['id']}"
    assert client.get(url, headers=tenant.auth).json()["id"] == survivor["id"]
    patched = client.patch(url, json={"status": "scheduled"}, headers=tenant.auth)
    assert (patched.status_code, patched.json()["id"]) == (200, survivor["id"])
    assert client.get(f"{CONTACTS}/{survivor['id']}", headers=tenant.auth).json()["status"] == (
        "scheduled"
    )
    assert len(message_ids(client, tenant, other["id"])) == 1
    assert identities(client, tenant, other["id"]) == identities(client, tenant, survivor["id"])
    merged = client.get(f"{url}/merges", headers=tenant.auth).json()["data"]
    assert [m["mergedContactId"] for m in merged] == [other["id"]]
    assert client.delete(url, headers=tenant.auth).status_code == 204
    assert client.get(f"{CONTACTS}/{survivor['id']}", headers=tenant.auth).status_code == 404


def test_new_routes_refuse_another_tenants_contact(
    client: TestClient, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    """Identities, merges and undo on another tenant's contact or merge are 404, nothing leaks."""
    a = create(client, other_tenant, name="Secret A", phone=unique_phone())
    b = create(client, other_tenant, name="Secret B")
    merge(client, other_tenant, a["id"], b["id"])
    [record] = client.get(f"{CONTACTS}/{a['id']}/merges", headers=other_tenant.auth).json()["data"]
    mine = create(client, tenant, name="Mine")
    responses = [
        client.get(f"{CONTACTS}/{a['id']}/identities", headers=tenant.auth),
        client.get(f"{CONTACTS}/{a['id']}/merges", headers=tenant.auth),
        client.post(f"{CONTACTS}/{a['id']}/merges/{record['id']}/undo", headers=tenant.auth),
        client.post(f"{CONTACTS}/{mine['id']}/merges/{record['id']}/undo", headers=tenant.auth),
    ]
    assert [r.status_code for r in responses] == [404, 404, 404, 404]
    assert all("Secret" not in r.text and a["phone"] not in r.text for r in responses)
    after = client.get(f"{CONTACTS}/{a['id']}/merges", headers=other_tenant.auth).json()["data"]
    assert after[0]["undoneAt"] is None


def test_undo_brings_back_what_it_had_and_leaves_what_came_since(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """Undo restores the merged contact's identities and messages; later messages stay."""
    phone, email = unique_phone(), unique_email()
    survivor = create(client, tenant, name="Sam", email=email)
    other = create(client, tenant, name="Sam Other", phone=phone)
    theirs = make_message(db, tenant.id, uuid.UUID(other["id"]))
    merge(client, tenant, survivor["id"], other["id"])
    since = make_message(db, tenant.id, uuid.UUID(survivor["id"]))
    [record] = client.get(f"{CONTACTS}/{survivor['id']}/merges", headers=tenant.auth).json()["data"]
    undone = client.post(
        f"{CONTACTS}/{survivor['id']}/merges/{record['id']}/undo", headers=tenant.auth
    )
    assert undone.status_code == 200, undone.text
    assert (undone.json()["id"], undone.json()["phone"]) == (other["id"], phone)
    assert identities(client, tenant, other["id"]) == {("phone", phone)}
    assert identities(client, tenant, survivor["id"]) == {("email", email)}
    assert message_ids(client, tenant, other["id"]) == {str(theirs)}
    assert message_ids(client, tenant, survivor["id"]) == {str(since)}
    back = client.get(f"{CONTACTS}/{survivor['id']}", headers=tenant.auth).json()
    assert (back["phone"], back["name"]) == (None, "Sam")
    assert len(client.get(CONTACTS, headers=tenant.auth).json()["data"]) == 2
    again = client.post(
        f"{CONTACTS}/{survivor['id']}/merges/{record['id']}/undo", headers=tenant.auth
    )
    assert again.status_code == 409
    assert "already undone" in again.json()["detail"]


def test_undo_after_the_survivor_was_merged_again_is_a_conflict(
    client: TestClient, tenant: TenantFixture
) -> None:
    """A merge whose survivor was itself merged since cannot be undone until that one is."""
    first = create(client, tenant, name="First")
    middle = create(client, tenant, name="Middle")
    last = create(client, tenant, name="Last")
    merge(client, tenant, middle["id"], last["id"])
    [inner] = client.get(f"{CONTACTS}/{middle['id']}/merges", headers=tenant.auth).json()["data"]
    merge(client, tenant, first["id"], middle["id"])
    blocked = client.post(
        f"{CONTACTS}/{middle['id']}/merges/{inner['id']}/undo", headers=tenant.auth
    )
    assert blocked.status_code == 409
    assert f"merged into contact {first['id']}" in blocked.json()["detail"]
    [outer] = client.get(f"{CONTACTS}/{first['id']}/merges", headers=tenant.auth).json()["data"]
    assert (
        client.post(
            f"{CONTACTS}/{first['id']}/merges/{outer['id']}/undo", headers=tenant.auth
        ).status_code
        == 200
    )
    assert (
        client.post(
            f"{CONTACTS}/{middle['id']}/merges/{inner['id']}/undo", headers=tenant.auth
        ).status_code
        == 200
    )
    assert len(client.get(CONTACTS, headers=tenant.auth).json()["data"]) == 3


def test_undo_of_an_unknown_or_malformed_merge_is_404(
    client: TestClient, tenant: TenantFixture
) -> None:
    """An undo naming no merge of this contact is a 404."""
    mine = create(client, tenant)
    for merge_id in (str(uuid.uuid4()), "not-a-uuid"):
        response = client.post(
            f"{CONTACTS}/{mine['id']}/merges/{merge_id}/undo", headers=tenant.auth
        )
        assert response.status_code == 404


def test_create_and_update_refuse_a_phone_held_as_any_identity(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """A phone a contact holds as a secondary identity is a 409 naming that contact."""
    ingest(db, tenant.id, inbound("telegram", sender_id="31337", display_name="Tel"))
    holder = client.get(CONTACTS, headers=tenant.auth).json()["data"][0]["id"]
    phone = unique_phone()
    ingest(db, tenant.id, inbound("telegram", sender_id="31337", phone=phone))
    second = unique_phone()
    with db.unit_of_work() as session:
        session.add(
            ContactIdentity(
                tenant_id=tenant.id, contact_id=uuid.UUID(holder), kind="phone", value=second
            )
        )
    created = client.post(CONTACTS, json={"name": "Dup", "phone": second}, headers=tenant.auth)
    assert (created.status_code, created.json()["existingContactId"]) == (409, holder)
    other = create(client, tenant, name="Other")
    patched = client.patch(f"{CONTACTS}/{other['id']}", json={"phone": second}, headers=tenant.auth)
    assert (patched.status_code, patched.json()["existingContactId"]) == (409, holder)


def test_patch_phone_keeps_identities_in_step(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """A changed phone retires the old one (free for others) and holds the new one."""
    old, new = unique_phone(), unique_phone()
    contact = create(client, tenant, name="Pat", phone=old)
    response = client.patch(f"{CONTACTS}/{contact['id']}", json={"phone": new}, headers=tenant.auth)
    assert response.status_code == 200
    assert ("phone", new) in identities(client, tenant, contact["id"])
    assert ("phone", old) not in identities(client, tenant, contact["id"])
    create(client, tenant, name="Next owner", phone=old)
    with db.sessions() as session:
        phones = session.scalars(select(Contact.phone).where(Contact.tenant_id == tenant.id))
        assert sorted(p for p in phones if p) == sorted([old, new])


def test_deleted_contacts_identities_no_longer_match(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """After a delete, a message from its phone makes a new contact; create may reuse it too."""
    phone = unique_phone()
    contact = create(client, tenant, name="Del", phone=phone)
    assert client.delete(f"{CONTACTS}/{contact['id']}", headers=tenant.auth).status_code == 204
    ingest(db, tenant.id, inbound("sms", phone=phone))
    [fresh] = client.get(CONTACTS, headers=tenant.auth).json()["data"]
    assert fresh["id"] != contact["id"]
    assert identities(client, tenant, fresh["id"]) == {("phone", phone)}


def test_undo_refused_when_an_identity_it_brought_is_someone_elses_now(
    client: TestClient, tenant: TenantFixture
) -> None:
    """A phone the merged contact brought, changed away and taken by a new contact: 409."""
    phone = unique_phone()
    survivor = create(client, tenant, name="Keep")
    other = create(client, tenant, name="Brought", phone=phone)
    merge(client, tenant, survivor["id"], other["id"])
    changed = client.patch(
        f"{CONTACTS}/{survivor['id']}", json={"phone": unique_phone()}, headers=tenant.auth
    )
    assert changed.status_code == 200
    taker = create(client, tenant, name="Taker", phone=phone)
    [record] = client.get(f"{CONTACTS}/{survivor['id']}/merges", headers=tenant.auth).json()["data"]
    refused = client.post(
        f"{CONTACTS}/{survivor['id']}/merges/{record['id']}/undo", headers=tenant.auth
    )
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        f"The merge cannot be undone: identity phone {phone} is now on contact {taker['id']}."
    )
    assert len(client.get(CONTACTS, headers=tenant.auth).json()["data"]) == 2
