"""Every change writes its event in its own transaction; a rolled-back change writes none."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from models import contacts, merges
from models.db import Database
from models.events import (
    UnknownEventTypeError,
    list_events,
    record_event,
)
from models.tenants import configure_tenant
from tests.events.helpers import events_of, types_of
from tests.factories import make_tenant
from tests.worker.helpers import drain, inbound, ingest, store


def _create(db: Database, tenant_id: uuid.UUID, **fields: Any) -> uuid.UUID:
    fields.setdefault("name", "Jane Smith")
    fields.setdefault("email", f"{uuid.uuid4().hex[:10]}@example.com")
    with db.unit_of_work() as session:
        contact = contacts.create_contact(session, tenant_id=tenant_id, region="US", **fields)
        return contact.id


def test_create_update_delete_each_write_one_event(db: Database) -> None:
    """contact.created, contact.updated (with the camelCase fields changed), contact.deleted."""
    tenant = make_tenant(db)
    contact_id = _create(db, tenant.id)
    with db.unit_of_work() as session:
        contacts.update_contact(
            session,
            tenant_id=tenant.id,
            contact_id=contact_id,
            region="US",
            changes={"status": "applicant", "channel_preference": "sms"},
        )
    with db.unit_of_work() as session:
        contacts.delete_contact(session, tenant_id=tenant.id, contact_id=contact_id)
    events = events_of(db, tenant.id)
    assert [e.type for e in events] == ["contact.created", "contact.updated", "contact.deleted"]
    assert [e.sequence for e in events] == [1, 2, 3]
    assert all(e.data["contactId"] == str(contact_id) for e in events)
    assert events[1].data["changed"] == ["channelPreference", "status"]


def test_delete_through_a_merged_id_names_the_survivor(db: Database) -> None:
    """contact.deleted names the contact deleted: the survivor, when asked by a merged-away id."""
    tenant = make_tenant(db)
    survivor_id, merged_id = _create(db, tenant.id), _create(db, tenant.id)
    with db.unit_of_work() as session:
        merges.merge_contacts(
            session,
            tenant_id=tenant.id,
            survivor_id=survivor_id,
            merged_id=merged_id,
            reason=merges.API_REASON,
        )
    with db.unit_of_work() as session:
        contacts.delete_contact(session, tenant_id=tenant.id, contact_id=merged_id)
    [deleted] = [e for e in events_of(db, tenant.id) if e.type == "contact.deleted"]
    assert deleted.data == {"contactId": str(survivor_id)}


def test_update_that_changes_nothing_writes_no_event(db: Database) -> None:
    """A PATCH with the values the contact already has is not a change."""
    tenant = make_tenant(db)
    contact_id = _create(db, tenant.id, name="Ann Lee")
    with db.unit_of_work() as session:
        contacts.update_contact(
            session,
            tenant_id=tenant.id,
            contact_id=contact_id,
            region="US",
            changes={"name": "Ann Lee"},
        )
    assert types_of(db, tenant.id) == ["contact.created"]


def test_rolled_back_change_leaves_no_event(db: Database) -> None:
    """The event shares the change's transaction: an error after it undoes both."""
    tenant = make_tenant(db)

    def create_then_fail() -> None:
        with db.unit_of_work() as session:
            contacts.create_contact(
                session, tenant_id=tenant.id, region="US", name="Gone", email="gone@example.com"
            )
            raise RuntimeError("the request failed after the write")

    with pytest.raises(RuntimeError):
        create_then_fail()
    assert types_of(db, tenant.id) == []
    _create(db, tenant.id)
    # The counter rolled back too: the next committed event is still number 1.
    assert [e.sequence for e in events_of(db, tenant.id)] == [1]


def test_refused_duplicate_writes_no_event(db: Database) -> None:
    """A create refused as a duplicate (409) is no change and so no event."""
    tenant = make_tenant(db)
    _create(db, tenant.id, email="dup@example.com")
    with pytest.raises(contacts.DuplicateContactError), db.unit_of_work() as session:
        contacts.create_contact(
            session, tenant_id=tenant.id, region="US", name="Twin", email="dup@example.com"
        )
    assert types_of(db, tenant.id) == ["contact.created"]


def test_ingestion_writes_created_and_received_without_body(db: Database) -> None:
    """A new sender: contact.created then message.received with ids, channel, no body."""
    tenant = make_tenant(db)
    message = inbound("sms", phone="+12125550123", text="secret viewing time")
    ingest(db, tenant.id, message)
    events = events_of(db, tenant.id)
    assert [e.type for e in events] == ["contact.created", "message.received"]
    received = events[1].data
    assert received["channel"] == "sms"
    assert received["providerMessageId"] == message.provider_message_id
    assert received["contactId"] == events[0].data["contactId"]
    assert "body" not in received
    assert "secret viewing time" not in str(received)


def test_ingestion_fill_in_is_contact_updated(db: Database) -> None:
    """A known Telegram sender who shares a phone: contact.updated naming `phone`."""
    tenant = make_tenant(db)
    ingest(db, tenant.id, inbound("telegram", sender_id="777", display_name="Bo"))
    ingest(db, tenant.id, inbound("telegram", sender_id="777", phone="+12125550199"))
    assert types_of(db, tenant.id) == [
        "contact.created",
        "message.received",
        "contact.updated",
        "message.received",
    ]
    assert events_of(db, tenant.id)[2].data["changed"] == ["phone"]


def test_events_include_body_setting_adds_the_text(db: Database) -> None:
    """`events_include_body=1` puts the message text in message.received."""
    tenant = make_tenant(db)
    with db.unit_of_work() as session:
        configure_tenant(session, tenant_id=tenant.id, values={"events_include_body": "1"})
    ingest(db, tenant.id, inbound("email", email="a@example.com", text="Hello there"))
    received = [e for e in events_of(db, tenant.id) if e.type == "message.received"]
    assert [e.data["body"] for e in received] == ["Hello there"]


def test_batch_of_messages_writes_one_event_each(db: Database) -> None:
    """A batch of 30 messages from 10 senders: 10 created, 30 received, sequences 1..40."""
    tenant = make_tenant(db)
    messages = [inbound("sms", phone=f"+1212555{n % 10:04d}") for n in range(30)]
    ingest(db, tenant.id, *messages)
    events = events_of(db, tenant.id)
    assert types_of(db, tenant.id).count("contact.created") == 10
    assert types_of(db, tenant.id).count("message.received") == 30
    assert [e.sequence for e in events] == list(range(1, 41))


def test_unknown_event_type_is_refused(db: Database) -> None:
    """A typo in a type is a bug to catch, never an event to publish."""
    tenant = make_tenant(db)
    with pytest.raises(UnknownEventTypeError), db.unit_of_work() as session:
        record_event(session, tenant_id=tenant.id, type="contact.exploded", data={})


@pytest.mark.postgres_only
def test_concurrent_writers_commit_in_sequence_order(db: Database) -> None:
    """While a writer holds sequence N uncommitted, a reader's cursor cannot pass N.

    The second writer waits on the counter row, so the feed never shows N+1 before N.
    """
    tenant = make_tenant(db)
    first_recorded = threading.Event()
    release_first = threading.Event()

    def slow_writer() -> None:
        with db.unit_of_work() as session:
            record_event(session, tenant_id=tenant.id, type="contact.created", data={"n": 1})
            first_recorded.set()
            assert release_first.wait(10)

    def fast_writer() -> None:
        with db.unit_of_work() as session:
            record_event(session, tenant_id=tenant.id, type="contact.created", data={"n": 2})

    slow = threading.Thread(target=slow_writer)
    slow.start()
    assert first_recorded.wait(10)
    fast = threading.Thread(target=fast_writer)
    fast.start()
    fast.join(timeout=0.5)
    # Blocked behind the first writer's counter lock; the feed shows nothing yet.
    assert fast.is_alive()
    with db.sessions() as session:
        page = list_events(session, tenant_id=tenant.id, after=None, limit=10, retention_days=30)
    assert page.events == []
    assert page.next_cursor == "0"
    release_first.set()
    slow.join(timeout=10)
    fast.join(timeout=10)
    assert [(e.sequence, e.data["n"]) for e in events_of(db, tenant.id)] == [(1, 1), (2, 2)]


def test_api_merge_and_undo_write_merged_and_unmerged(db: Database) -> None:
    """A merge through the API is contact.merged (reason api); its undo is contact.unmerged."""
    tenant = make_tenant(db)
    survivor = _create(db, tenant.id, name="Ann")
    other = _create(db, tenant.id, name="Ann Again")
    with db.unit_of_work() as session:
        merge = merges.merge_contacts(
            session, tenant_id=tenant.id, survivor_id=survivor, merged_id=other, reason="api"
        )
        merge_id = merge.id
    with db.unit_of_work() as session:
        merges.undo_merge(session, tenant_id=tenant.id, contact_id=survivor, merge_id=merge_id)
    events = events_of(db, tenant.id)
    assert [e.type for e in events][2:] == ["contact.merged", "contact.unmerged"]
    assert events[2].data["contactId"] == str(survivor)
    assert events[2].data["mergedContactId"] == str(other)
    assert events[2].data["reason"] == "api"
    assert events[3].data == {
        "contactId": str(survivor),
        "restoredContactId": str(other),
        "mergeId": str(merge_id),
    }


def test_attested_merge_in_one_batch_comes_after_the_merged_contacts_creation(
    db: Database,
) -> None:
    """A sender made and merged away in one batch: its contact.created precedes the merge."""
    tenant = make_tenant(db)
    known = _create(db, tenant.id, name="Bo Known", phone="+12125550188")
    # Stored apart (in order of acceptance), drained as one batch.
    store(db, tenant.id, inbound("telegram", sender_id="778", display_name="Bo"))
    store(db, tenant.id, inbound("telegram", sender_id="778", phone="+12125550188"))
    assert drain(db, tenant.id).handled == 2
    events = events_of(db, tenant.id)
    merged = [e for e in events if e.type == "contact.merged"]
    assert len(merged) == 1, [e.type for e in events]
    assert merged[0].data["contactId"] == str(known)
    away = merged[0].data["mergedContactId"]
    first_naming_away = next(
        e for e in events if away in (e.data.get("contactId"), e.data.get("mergedContactId"))
    )
    assert first_naming_away.type == "contact.created"
    assert first_naming_away.sequence < merged[0].sequence


def test_messages_of_one_request_are_ingested_in_their_order(db: Database) -> None:
    """Several messages stored together (one POST, one group commit) are handled, and their
    message.received events numbered, in the order they came, not by their random row ids."""
    tenant = make_tenant(db)
    messages = [
        inbound("whatsapp", sender_id="15550001111", provider_message_id=f"wamid.{n}")
        for n in range(8)
    ]
    store(db, tenant.id, *messages)
    assert drain(db, tenant.id).handled == 8
    received = [e for e in events_of(db, tenant.id) if e.type == "message.received"]
    assert [e.data["providerMessageId"] for e in received] == [f"wamid.{n}" for n in range(8)]
