"""models.contacts and models.idempotency called directly: scoping, validation, races."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select

from models import contacts
from models.contacts import (
    ContactNotFoundError,
    ContactValidationError,
    DuplicateContactError,
    contacts_of,
)
from models.db import Database
from models.idempotency import (
    IdempotencyKeyInFlightError,
    IdempotencyKeyReusedError,
    StoredResponse,
    claim_idempotency_key,
    purge_expired_idempotency_keys,
    record_idempotent_response,
    run_idempotently,
)
from models.schema import Contact, IdempotencyKey, utcnow
from tests.factories import make_contact, make_tenant


def new_phone() -> str:
    return f"+1212{uuid.uuid4().int % 10**7:07d}"


def test_contacts_of_scopes_to_tenant_and_live(db: Database) -> None:
    """contacts_of(tenant) sees that tenant's live contacts only."""
    mine, theirs = make_tenant(db), make_tenant(db)
    live = make_contact(db, mine.id)
    make_contact(db, mine.id, deleted_at=utcnow())
    make_contact(db, theirs.id)
    with db.sessions() as session:
        assert list(session.scalars(contacts_of(mine.id).with_only_columns(Contact.id))) == [live]


def test_create_normalizes_and_defaults(db: Database) -> None:
    """create_contact stores E.164 and lowercase email with the documented defaults."""
    tenant = make_tenant(db)
    with db.unit_of_work() as session:
        contact = contacts.create_contact(
            session,
            tenant_id=tenant.id,
            region="US",
            name=" Ann ",
            email="Ann@X.Example",
            phone="(212) 555-0101",
        )
    assert (contact.name, contact.email, contact.phone) == ("Ann", "ann@x.example", "+12125550101")
    assert (contact.status, contact.role, contact.source, contact.language) == (
        "prospect",
        "prospect",
        "api",
        "en",
    )
    assert contact.created_at == contact.updated_at


def test_create_reports_every_bad_field_at_once(db: Database) -> None:
    """Several bad fields give one error naming each of them."""
    tenant = make_tenant(db)
    with db.unit_of_work() as session, pytest.raises(ContactValidationError) as caught:
        contacts.create_contact(
            session,
            tenant_id=tenant.id,
            region="US",
            name="",
            email="bad",
            status="lead",
            language="EN",
        )
    assert {p.field for p in caught.value.problems} == {"name", "email", "status", "language"}


def test_get_other_tenants_contact_is_not_found(db: Database) -> None:
    """get_contact with another tenant's id raises ContactNotFoundError."""
    mine, theirs = make_tenant(db), make_tenant(db)
    contact_id = make_contact(db, theirs.id)
    with db.sessions() as session, pytest.raises(ContactNotFoundError):
        contacts.get_contact(session, tenant_id=mine.id, contact_id=contact_id)


def test_update_refuses_unknown_fields(db: Database) -> None:
    """update_contact takes only the updatable fields."""
    tenant = make_tenant(db)
    contact_id = make_contact(db, tenant.id)
    with db.unit_of_work() as session, pytest.raises(ContactValidationError) as caught:
        contacts.update_contact(
            session,
            tenant_id=tenant.id,
            contact_id=contact_id,
            region="US",
            changes={"applied_at": utcnow(), "notes": "x"},
        )
    assert {p.field for p in caught.value.problems} == {"applied_at", "notes"}


def test_update_status_drives_applied_at(db: Database) -> None:
    """applied_at is set on becoming applicant and cleared on leaving it."""
    tenant = make_tenant(db)
    contact_id = make_contact(db, tenant.id)
    with db.unit_of_work() as session:
        contact = contacts.update_contact(
            session,
            tenant_id=tenant.id,
            contact_id=contact_id,
            region="US",
            changes={"status": "applicant"},
        )
        assert contact.applied_at is not None
        contact = contacts.update_contact(
            session,
            tenant_id=tenant.id,
            contact_id=contact_id,
            region="US",
            changes={"status": "archived"},
        )
        assert contact.applied_at is None


def test_delete_frees_phone_and_hides_contact(db: Database) -> None:
    """After delete_contact the contact is gone from queries and its phone can be reused."""
    tenant = make_tenant(db)
    phone = new_phone()
    contact_id = make_contact(db, tenant.id, phone=phone)
    with db.unit_of_work() as session:
        contacts.delete_contact(session, tenant_id=tenant.id, contact_id=contact_id)
    with db.unit_of_work() as session:
        with pytest.raises(ContactNotFoundError):
            contacts.delete_contact(session, tenant_id=tenant.id, contact_id=contact_id)
        again = contacts.create_contact(
            session, tenant_id=tenant.id, region="US", name="B", phone=phone
        )
    assert again.id != contact_id


def test_list_clamps_and_counts(db: Database) -> None:
    """list_contacts clamps the limit to max_limit and reports the total."""
    tenant = make_tenant(db)
    for _ in range(3):
        make_contact(db, tenant.id)
    with db.sessions() as session:
        page = contacts.list_contacts(session, tenant_id=tenant.id, limit=50, max_limit=2)
    assert (page.limit, page.total, page.total_pages, len(page.items)) == (2, 3, 2, 2)


@pytest.mark.postgres_only
def test_concurrent_create_loser_gets_duplicate_with_winners_id(db: Database) -> None:
    """A create that passed the pre-check but lost at the unique index names the winner."""
    tenant = make_tenant(db)
    phone = new_phone()
    winner_flushed = threading.Event()
    with db.unit_of_work() as winner_session:
        winner = contacts.create_contact(
            winner_session, tenant_id=tenant.id, region="US", name="Winner", phone=phone
        )
        winner_flushed.set()

        def loser() -> uuid.UUID | None:
            # The winner is flushed but not committed: the pre-check cannot see it, the index can.
            with db.unit_of_work() as session:
                try:
                    contacts.create_contact(
                        session, tenant_id=tenant.id, region="US", name="Loser", phone=phone
                    )
                except DuplicateContactError as exc:
                    return exc.existing_id
            return None

        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(loser)
            assert winner_flushed.wait(timeout=5)
            blocked = _wait_until_blocked_on_lock(db)
            assert blocked, "the loser never waited on the unique index"
            winner_session.commit()
            assert future.result(timeout=10) == winner.id


def _wait_until_blocked_on_lock(db: Database) -> bool:
    """True once some other backend waits on a lock (PostgreSQL), polled with a deadline."""
    import time

    from sqlalchemy import text

    deadline = time.monotonic() + 10
    with db.engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            ).scalar_one()
            if waiting:
                return True
            connection.rollback()
            time.sleep(0.02)  # polling a condition with a deadline
    return False


def test_claim_then_replay_then_mismatch(db: Database) -> None:
    """A claimed key answers in-flight, then replays its response, and refuses another body."""
    tenant = make_tenant(db)
    with db.unit_of_work() as session:
        assert (
            claim_idempotency_key(session, tenant_id=tenant.id, key="k", request_hash="a") is None
        )
    with db.unit_of_work() as session, pytest.raises(IdempotencyKeyInFlightError):
        claim_idempotency_key(session, tenant_id=tenant.id, key="k", request_hash="a")
    with db.unit_of_work() as session:
        record_idempotent_response(
            session,
            tenant_id=tenant.id,
            key="k",
            request_hash="a",
            response=StoredResponse(201, {"id": "x"}),
        )
    with db.unit_of_work() as session:
        assert claim_idempotency_key(
            session, tenant_id=tenant.id, key="k", request_hash="a"
        ) == StoredResponse(201, {"id": "x"})
    with db.unit_of_work() as session, pytest.raises(IdempotencyKeyReusedError):
        claim_idempotency_key(session, tenant_id=tenant.id, key="k", request_hash="b")


def test_unexpected_failure_releases_the_key(db: Database) -> None:
    """When the action fails unexpectedly the marker is dropped, so a retry can run."""
    tenant = make_tenant(db)

    def boom(_session: object) -> StoredResponse:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_idempotently(
            db,
            tenant_id=tenant.id,
            key="r",
            request_hash="h",
            action=boom,
            error_response=lambda _exc: None,
        )
    with db.sessions() as session:
        assert session.get(IdempotencyKey, (tenant.id, "r")) is None
    response, replayed = run_idempotently(
        db,
        tenant_id=tenant.id,
        key="r",
        request_hash="h",
        action=lambda _s: StoredResponse(201, {"ok": True}),
        error_response=lambda _e: None,
    )
    assert (response.status, replayed) == (201, False)


def test_purge_removes_only_expired_keys(db: Database) -> None:
    """purge_expired_idempotency_keys drops keys past their 24 hours and keeps the rest."""
    tenant = make_tenant(db)
    now = utcnow()
    with db.unit_of_work() as session:
        for key, age in (("old", timedelta(hours=25)), ("new", timedelta(hours=1))):
            session.add(
                IdempotencyKey(
                    tenant_id=tenant.id,
                    key=key,
                    request_hash="h",
                    created_at=now - age,
                    expires_at=now - age + timedelta(hours=24),
                )
            )
    with db.unit_of_work() as session:
        purge_expired_idempotency_keys(session, now=now)
    with db.sessions() as session:
        keys = set(
            session.scalars(select(IdempotencyKey.key).where(IdempotencyKey.tenant_id == tenant.id))
        )
    assert keys == {"new"}
