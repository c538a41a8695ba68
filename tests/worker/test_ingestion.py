"""The identity rules of the interface, on the service itself, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import update

from models.contacts import delete_contact
from models.db import Database
from models.schema import Message
from tests.factories import make_contact, make_tenant
from tests.worker.helpers import (
    drain,
    identity_count,
    inbound,
    ingest,
    live_contacts,
    message_rows,
    store,
)


def test_new_sender_becomes_a_prospect_of_the_channel(db: Database) -> None:
    """A new sender is a contact with source and channelPreference = channel, prospect, 'en'."""
    tenant = make_tenant(db)
    result = ingest(db, tenant.id, inbound("sms", phone="+14155550100", display_name="Ana Lima"))
    [contact] = live_contacts(db, tenant.id)
    assert (contact.name, contact.phone, contact.source, contact.channel_preference) == (
        "Ana Lima",
        "+14155550100",
        "sms",
        "sms",
    )
    assert (contact.status, contact.role, contact.language) == ("prospect", "prospect", "en")
    [row] = message_rows(db, tenant.id)
    assert (row.state, row.contact_id, result.handled) == ("handled", contact.id, 1)
    assert row.handled_at is not None


def test_known_phone_is_the_same_contact(db: Database) -> None:
    """A message from a phone a live contact holds is recorded on that contact."""
    tenant = make_tenant(db)
    existing = make_contact(db, tenant.id, phone="+14155550101", name="Bo", source="api")
    ingest(
        db,
        tenant.id,
        inbound("whatsapp", sender_id="14155550101", phone="+14155550101", display_name="Bo W"),
    )
    [contact] = live_contacts(db, tenant.id)
    assert contact.id == existing
    assert [m.contact_id for m in message_rows(db, tenant.id)] == [existing]


def test_known_email_is_the_same_contact(db: Database) -> None:
    """An email sender (lowercased by its adapter) matches the live contact with that email."""
    tenant = make_tenant(db)
    existing = make_contact(db, tenant.id, email="cy@example.com", name="Cy")
    ingest(db, tenant.id, inbound("email", email="cy@example.com", display_name="Cy D"))
    assert [c.id for c in live_contacts(db, tenant.id)] == [existing]


def test_telegram_user_who_shares_phone_gains_it(db: Database) -> None:
    """A Telegram user known by id gains the phone they later share; still one contact."""
    tenant = make_tenant(db)
    ingest(db, tenant.id, inbound("telegram", sender_id="777", display_name="Dee", username="dee"))
    [before] = live_contacts(db, tenant.id)
    assert before.phone is None
    ingest(
        db,
        tenant.id,
        inbound("telegram", sender_id="777", phone="+447700900123", display_name="Dee"),
    )
    [after] = live_contacts(db, tenant.id)
    assert (after.id, after.phone) == (before.id, "+447700900123")
    assert identity_count(db, tenant.id) == 2  # the Telegram id and the shared phone


def test_whatsapp_brazil_ninth_digit_variant_is_the_same_contact(db: Database) -> None:
    """A WhatsApp id without Brazil's ninth digit matches the contact stored with it."""
    tenant = make_tenant(db, region="BR")
    existing = make_contact(db, tenant.id, phone="+5511987654321", name="Eva")
    ingest(db, tenant.id, inbound("whatsapp", sender_id="551187654321", phone="+551187654321"))
    assert [c.id for c in live_contacts(db, tenant.id)] == [existing]


def test_whatsapp_mexico_one_variant_is_the_same_contact(db: Database) -> None:
    """A WhatsApp id with Mexico's old `1` after +52 matches the contact stored without it."""
    tenant = make_tenant(db, region="MX")
    existing = make_contact(db, tenant.id, phone="+525512345678", name="Fer")
    ingest(db, tenant.id, inbound("whatsapp", sender_id="5215512345678", phone="+5215512345678"))
    assert [c.id for c in live_contacts(db, tenant.id)] == [existing]


def test_national_variants_only_apply_on_whatsapp(db: Database) -> None:
    """An SMS from the variant number is another line: a new contact."""
    tenant = make_tenant(db, region="BR")
    make_contact(db, tenant.id, phone="+5511987654321", name="Eva")
    ingest(db, tenant.id, inbound("sms", phone="+551187654321"))
    assert len(live_contacts(db, tenant.id)) == 2


def test_soft_deleted_contact_stays_deleted(db: Database) -> None:
    """A message from a deleted contact's phone and sender id makes a new contact."""
    tenant = make_tenant(db)
    ingest(
        db,
        tenant.id,
        inbound("whatsapp", sender_id="14155550102", phone="+14155550102", display_name="Gus"),
    )
    [old] = live_contacts(db, tenant.id)
    with db.unit_of_work() as session:
        delete_contact(session, tenant_id=tenant.id, contact_id=old.id)
    ingest(
        db,
        tenant.id,
        inbound("whatsapp", sender_id="14155550102", phone="+14155550102", display_name="Gus"),
    )
    [new] = live_contacts(db, tenant.id)
    assert new.id != old.id
    assert new.phone == "+14155550102"
    # The sender id now names the new contact, so a third message does not make another.
    ingest(db, tenant.id, inbound("whatsapp", sender_id="14155550102", phone="+14155550102"))
    assert [c.id for c in live_contacts(db, tenant.id)] == [new.id]
    assert identity_count(db, tenant.id) == 2  # wa_id and phone, active, on the new contact


def test_known_sender_fills_gaps_but_keeps_source_status_role(db: Database) -> None:
    """A known contact gains a missing email and channel, never a new source, status or role."""
    tenant = make_tenant(db)
    existing = make_contact(
        db,
        tenant.id,
        phone="+14155550103",
        name="Hal",
        source="referral",
        status="active",
        role="tenant",
        language="de",
    )
    ingest(db, tenant.id, inbound("sms", phone="+14155550103", display_name="Other Name"))
    ingest(db, tenant.id, inbound("email", email="hal@example.com", phone="+14155550103"))
    [contact] = live_contacts(db, tenant.id)
    assert contact.id == existing
    assert (contact.source, contact.status, contact.role) == ("referral", "active", "tenant")
    assert (contact.name, contact.language) == ("Hal", "de")
    assert (contact.email, contact.channel_preference) == ("hal@example.com", "sms")


def test_phone_and_email_on_one_message_merge_their_contacts(db: Database) -> None:
    """A message attesting a phone and an email held by two contacts merges them, older first."""
    tenant = make_tenant(db)
    by_phone = make_contact(db, tenant.id, phone="+14155550104", name="Ida")
    make_contact(db, tenant.id, email="ida@example.com", name="Ida at work")
    ingest(db, tenant.id, inbound("email", email="ida@example.com", phone="+14155550104"))
    [contact] = live_contacts(db, tenant.id)
    assert (contact.id, contact.email, contact.name) == (by_phone, "ida@example.com", "Ida")


def test_display_name_replaces_a_stand_in_name(db: Database) -> None:
    """A contact named by its phone (an SMS) takes the name a later WhatsApp profile gives."""
    tenant = make_tenant(db)
    ingest(db, tenant.id, inbound("sms", phone="+14155550123"))
    ingest(
        db,
        tenant.id,
        inbound(
            "whatsapp", sender_id="14155550123", phone="+14155550123", display_name="Maria Garcia"
        ),
    )
    [contact] = live_contacts(db, tenant.id)
    assert (contact.name, contact.source) == ("Maria Garcia", "sms")


def test_real_name_is_never_replaced(db: Database) -> None:
    """A contact with a real name keeps it whatever name a channel shows later."""
    tenant = make_tenant(db)
    make_contact(db, tenant.id, phone="+14155550124", name="Maria G.")
    ingest(
        db,
        tenant.id,
        inbound("whatsapp", sender_id="14155550124", phone="+14155550124", display_name="mari 🌸"),
    )
    [contact] = live_contacts(db, tenant.id)
    assert contact.name == "Maria G."


def test_language_from_telegram_else_english(db: Database) -> None:
    """The language the adapter read (Telegram's, as ISO 639-1) is kept; without one: 'en'."""
    tenant = make_tenant(db)
    ingest(
        db,
        tenant.id,
        inbound("telegram", sender_id="901", display_name="Jo", language="pt"),
        inbound("sms", phone="+14155550105"),
    )
    languages = {c.source: c.language for c in live_contacts(db, tenant.id)}
    assert languages == {"telegram": "pt", "sms": "en"}


def test_redelivery_changes_nothing(db: Database) -> None:
    """The same provider message id stored and drained twice is one row and one contact."""
    tenant = make_tenant(db)
    message = inbound("sms", phone="+14155550106", display_name="Kim")
    ingest(db, tenant.id, message)
    [before] = live_contacts(db, tenant.id)
    assert store(db, tenant.id, message) == []
    result = drain(db, tenant.id)
    [after] = live_contacts(db, tenant.id)
    assert result.handled == 0
    assert (after.id, after.updated_at, after.name) == (before.id, before.updated_at, "Kim")
    assert len(message_rows(db, tenant.id)) == 1


def test_name_falls_back_to_phone_email_then_username(db: Database) -> None:
    """Without a display name, the name is the phone, else the email, else @username."""
    tenant = make_tenant(db)
    ingest(
        db,
        tenant.id,
        inbound("sms", phone="+14155550107"),
        inbound("email", email="lee@example.com"),
        inbound("telegram", sender_id="902", username="lee_t"),
    )
    names = {c.source: c.name for c in live_contacts(db, tenant.id)}
    assert names == {"sms": "+14155550107", "email": "lee@example.com", "telegram": "@lee_t"}


def test_same_new_sender_twice_in_one_batch_is_one_contact(db: Database) -> None:
    """Two messages of one new sender in one batch, on two channels, make one contact."""
    tenant = make_tenant(db)
    ingest(
        db,
        tenant.id,
        inbound("sms", phone="+14155550108", display_name="Max"),
        inbound("whatsapp", sender_id="14155550108", phone="+14155550108"),
    )
    [contact] = live_contacts(db, tenant.id)
    assert {m.contact_id for m in message_rows(db, tenant.id)} == {contact.id}


def test_poison_message_is_parked_after_max_attempts(db: Database) -> None:
    """An unreadable payload is charged an attempt per drain and then parked as failed."""
    tenant = make_tenant(db)
    [bad] = store(db, tenant.id, inbound("sms", phone="+14155550109"))
    store(db, tenant.id, inbound("sms", phone="+14155550110"))
    with db.unit_of_work() as session:
        session.execute(update(Message).where(Message.id == bad).values(payload={"channel": "sms"}))
    first = drain(db, tenant.id, max_attempts=2)
    assert (first.handled, first.failed, list(first.retrying)) == (1, 0, [bad])
    second = drain(db, tenant.id, max_attempts=2)
    assert (second.handled, second.failed) == (0, 1)
    row = next(m for m in message_rows(db, tenant.id) if m.id == bad)
    assert (row.state, row.attempts) == ("failed", 2)
    assert row.last_error is not None
    assert "KeyError" in row.last_error


def test_other_tenants_contacts_never_match(db: Database) -> None:
    """A phone held by another tenant's contact makes a new contact in this tenant."""
    tenant, other = make_tenant(db), make_tenant(db)
    make_contact(db, other.id, phone="+14155550111")
    ingest(db, tenant.id, inbound("sms", phone="+14155550111"))
    assert len(live_contacts(db, tenant.id)) == 1
