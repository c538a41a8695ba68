"""Writes racing each other through a real server on PostgreSQL: one winner, no duplicates, and
a write that waited on a merge lands on the survivor."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select, text

from models import merges
from models.db import Database
from models.schema import Contact, ContactIdentity
from tests.api.conftest import CONTACTS, unique_phone
from tests.factories import TenantFixture
from tests.support import wait_for

pytestmark = pytest.mark.postgres_only


def race(
    base_url: str, n: int, headers: dict[str, str], body: dict[str, str]
) -> list[httpx.Response]:
    """n clients each send one POST, released together by a barrier."""
    barrier = threading.Barrier(n)

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            barrier.wait(timeout=30)
            return client.post(CONTACTS, json=body, headers=headers)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def live_contacts_with_phone(db: Database, tenant: TenantFixture, phone: str) -> int:
    with db.sessions() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(Contact)
                .where(
                    Contact.tenant_id == tenant.id,
                    Contact.phone == phone,
                    Contact.deleted_at.is_(None),
                )
            )
            or 0
        )


def test_twenty_simultaneous_creates_with_one_phone(
    live_server: str, db: Database, tenant: TenantFixture
) -> None:
    """20 concurrent creates with one phone: exactly one 201, nineteen 409s naming it."""
    phone = unique_phone()
    responses = race(live_server, 20, tenant.auth, {"name": "Racer", "phone": phone})
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19
    winner = next(r for r in responses if r.status_code == 201).json()["id"]
    assert {r.json()["existingContactId"] for r in responses if r.status_code == 409} == {winner}
    assert live_contacts_with_phone(db, tenant, phone) == 1


def test_ten_simultaneous_creates_with_one_idempotency_key(
    live_server: str, db: Database, tenant: TenantFixture
) -> None:
    """10 concurrent creates with one key and body make one contact; the rest replay or 409."""
    phone = unique_phone()
    headers = {**tenant.auth, "Idempotency-Key": f"race-{phone}"}
    responses = race(live_server, 10, headers, {"name": "Racer", "phone": phone})
    originals = [
        r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers
    ]
    replays = [r for r in responses if r.headers.get("idempotent-replayed") == "true"]
    in_flight = [r for r in responses if r.status_code == 409]
    assert len(originals) == 1
    assert len(originals) + len(replays) + len(in_flight) == 10
    assert all(r.json() == originals[0].json() for r in replays)
    assert all(r.json()["errors"][0]["field"] == "Idempotency-Key" for r in in_flight)
    assert live_contacts_with_phone(db, tenant, phone) == 1
    after = httpx.post(
        f"{live_server}{CONTACTS}", json={"name": "Racer", "phone": phone}, headers=headers
    )
    assert after.status_code == 201
    assert after.headers["idempotent-replayed"] == "true"
    assert after.json() == originals[0].json()


def test_simultaneous_patches_giving_one_email_to_many_contacts(
    live_server: str, db: Database, tenant: TenantFixture
) -> None:
    """10 contacts PATCHed to one email at once: one 200, nine 409s naming the winner, no 5xx."""
    email = f"shared-{uuid.uuid4().hex[:8]}@example.com"
    ids = []
    with httpx.Client(base_url=live_server, headers=tenant.auth, timeout=30) as client:
        for n in range(10):
            created = client.post(CONTACTS, json={"name": f"P{n}", "phone": unique_phone()})
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
    barrier = threading.Barrier(len(ids))

    def one(contact_id: str) -> httpx.Response:
        with httpx.Client(base_url=live_server, headers=tenant.auth, timeout=30) as client:
            barrier.wait(timeout=30)
            return client.patch(f"{CONTACTS}/{contact_id}", json={"email": email})

    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        responses = list(pool.map(one, ids))
    assert sorted(r.status_code for r in responses) == [200] + [409] * 9
    winner = next(r for r in responses if r.status_code == 200).json()["id"]
    assert {r.json()["existingContactId"] for r in responses if r.status_code == 409} == {winner}
    with db.sessions() as session:
        holders = session.scalars(
            select(ContactIdentity.contact_id).where(
                ContactIdentity.tenant_id == tenant.id,
                ContactIdentity.kind == "email",
                ContactIdentity.value == email,
                ContactIdentity.retired_at.is_(None),
            )
        )
        assert [str(h) for h in holders] == [winner]


def _someone_waits_on_a_lock(db: Database) -> bool:
    with db.engine.connect() as connection:
        waiting = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        ).scalar_one()
    return bool(waiting)


@pytest.mark.parametrize(
    ("method", "body", "expected"),
    [("PATCH", {"role": "vendor"}, 200), ("DELETE", None, 204)],
)
def test_a_write_waiting_on_a_merge_lands_on_the_survivor(
    live_server: str,
    db: Database,
    tenant: TenantFixture,
    method: str,
    body: dict[str, str] | None,
    expected: int,
) -> None:
    """A PATCH or DELETE of a contact being merged away waits for the merge, then acts on the
    survivor (never a 404 for an id that resolves)."""
    with httpx.Client(base_url=live_server, headers=tenant.auth, timeout=30) as client:
        survivor = client.post(CONTACTS, json={"name": "Keep", "phone": unique_phone()}).json()
        merged = client.post(CONTACTS, json={"name": "Gone", "phone": unique_phone()}).json()
    with db.unit_of_work() as session, ThreadPoolExecutor(max_workers=1) as pool:
        # The merge holds both rows locked until this block commits.
        merges.merge_contacts(
            session,
            tenant_id=tenant.id,
            survivor_id=uuid.UUID(survivor["id"]),
            merged_id=uuid.UUID(merged["id"]),
            reason=merges.API_REASON,
        )
        future = pool.submit(
            httpx.request,
            method,
            f"{live_server}{CONTACTS}/{merged['id']}",
            json=body,
            headers=tenant.auth,
            timeout=30,
        )
        wait_for(lambda: _someone_waits_on_a_lock(db), what="the write to wait on the merge")
        session.commit()
        response = future.result(timeout=30)
    assert response.status_code == expected, response.text
    after = httpx.get(f"{live_server}{CONTACTS}/{survivor['id']}", headers=tenant.auth)
    if method == "PATCH":
        assert response.json()["id"] == survivor["id"]
        assert after.json()["role"] == "vendor"
    else:
        assert after.status_code == 404
