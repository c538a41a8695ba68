"""Attested links: what one message's identities add, merge and retire, on SQLite and PostgreSQL.

Messages are built as InboundMessages directly (the adapters hand over this shape) and run
through the real drain.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select

from channels.base import Identity
from models.db import Database
from models.schema import ContactIdentity, ContactMerge
from tests.factories import make_contact, make_tenant
from tests.worker.helpers import identity_count, inbound, ingest, live_contacts, message_rows


def identities_of(db: Database, contact_id: uuid.UUID) -> set[tuple[str, str]]:
    """The contact's active identities as (kind, value)."""
    with db.sessions() as session:
        rows = session.execute(
            select(ContactIdentity.kind, ContactIdentity.value).where(
                ContactIdentity.contact_id == contact_id, ContactIdentity.retired_at.is_(None)
            )
        )
        return {(row.kind, row.value) for row in rows}


def merges_of(db: Database, tenant_id: uuid.UUID) -> list[ContactMerge]:
    with db.sessions() as session:
        return list(
            session.scalars(select(ContactMerge).where(ContactMerge.tenant_id == tenant_id))
        )


def test_telegram_user_sharing_an_sms_contacts_phone_merges_them(db: Database) -> None:
    """SMS from a number, then a Telegram user sharing it: one contact, both ids and messages."""
    tenant = make_tenant(db)
    ingest(db, tenant.id, inbound("sms", phone="+14155550200"))
    ingest(db, tenant.id, inbound("telegram", sender_id="4242", display_name="Tia", language="es"))
    assert len(live_contacts(db, tenant.id)) == 2
    ingest(db, tenant.id, inbound("telegram", sender_id="4242", phone="+14155550200"))
    [contact] = live_contacts(db, tenant.id)
    assert identities_of(db, contact.id) == {("phone", "+14155550200"), ("telegram", "4242")}
    assert {m.contact_id for m in message_rows(db, tenant.id)} == {contact.id}
    assert len(message_rows(db, tenant.id)) == 3
    # The SMS contact is older, so it survives; it gains the real name and the language.
    assert (contact.source, contact.name, contact.language) == ("sms", "Tia", "es")
    [merge] = merges_of(db, tenant.id)
    assert (merge.survivor_id, merge.reason) == (contact.id, "attested: telegram shared phone")
    assert len(merge.message_ids) == 1


def test_identity_no_one_holds_joins_the_matched_contact(db: Database) -> None:
    """A WhatsApp message with a wa_id and a new BSUID adds the BSUID to its contact."""
    tenant = make_tenant(db)
    ingest(db, tenant.id, inbound("whatsapp", sender_id="14155550201", phone="+14155550201"))
    ingest(
        db,
        tenant.id,
        inbound("whatsapp", sender_id="14155550201", bsuid="US.13491208655302741918"),
    )
    [contact] = live_contacts(db, tenant.id)
    assert ("whatsapp_bsuid", "US.13491208655302741918") in identities_of(db, contact.id)
    assert merges_of(db, tenant.id) == []


def test_bsuid_only_sender_is_found_again_by_bsuid(db: Database) -> None:
    """A WhatsApp user known only by BSUID (no phone) is one contact across messages."""
    tenant = make_tenant(db)
    ingest(db, tenant.id, inbound("whatsapp", bsuid="US.1", display_name="Uma"))
    ingest(db, tenant.id, inbound("whatsapp", bsuid="US.1"))
    [contact] = live_contacts(db, tenant.id)
    assert (contact.name, contact.phone) == ("Uma", None)
    assert identities_of(db, contact.id) == {("whatsapp_bsuid", "US.1")}


def test_username_or_id_standing_in_for_a_name_gives_way_to_a_real_one(db: Database) -> None:
    """A contact named by its @username or its id gains the display name a later message gives."""
    tenant = make_tenant(db)
    ingest(db, tenant.id, inbound("whatsapp", bsuid="US.7", username="uma.k"))
    ingest(db, tenant.id, inbound("whatsapp", bsuid="US.8"))
    assert sorted(c.name for c in live_contacts(db, tenant.id)) == ["@uma.k", "whatsapp US.8"]
    ingest(db, tenant.id, inbound("whatsapp", bsuid="US.7", username="uma.k", display_name="Uma"))
    ingest(db, tenant.id, inbound("whatsapp", bsuid="US.8", display_name="Ola"))
    assert sorted(c.name for c in live_contacts(db, tenant.id)) == ["Ola", "Uma"]
    # A real name is the person's: a later, different display name does not replace it.
    ingest(db, tenant.id, inbound("whatsapp", bsuid="US.7", display_name="Someone Else"))
    assert sorted(c.name for c in live_contacts(db, tenant.id)) == ["Ola", "Uma"]


def test_wa_id_and_bsuid_of_two_contacts_merge(db: Database) -> None:
    """A message carrying a wa_id and a BSUID held by two contacts merges them."""
    tenant = make_tenant(db)
    ingest(db, tenant.id, inbound("whatsapp", sender_id="14155550202", phone="+14155550202"))
    ingest(db, tenant.id, inbound("whatsapp", bsuid="US.2"))
    ingest(db, tenant.id, inbound("whatsapp", sender_id="14155550202", bsuid="US.2"))
    [contact] = live_contacts(db, tenant.id)
    assert identities_of(db, contact.id) == {
        ("whatsapp", "14155550202"),
        ("phone", "+14155550202"),
        ("whatsapp_bsuid", "US.2"),
    }
    assert [m.reason for m in merges_of(db, tenant.id)] == [
        "attested: whatsapp shared whatsapp_bsuid"
    ]


def test_twilio_from_phone_with_external_user_id_links(db: Database) -> None:
    """Twilio's WhatsApp `From` phone with its ExternalUserId (BSUID) is one contact."""
    tenant = make_tenant(db)
    ingest(db, tenant.id, inbound("whatsapp", bsuid="US.3", display_name="Vic"))
    ingest(db, tenant.id, inbound("whatsapp", phone="+14155550203", bsuid="US.3"))
    [contact] = live_contacts(db, tenant.id)
    assert contact.phone == "+14155550203"
    assert identities_of(db, contact.id) == {("phone", "+14155550203"), ("whatsapp_bsuid", "US.3")}


def test_same_person_on_rcs_sms_and_whatsapp_is_one_contact(db: Database) -> None:
    """One number writing over SMS, RCS and WhatsApp is one contact with three messages."""
    tenant = make_tenant(db)
    ingest(db, tenant.id, inbound("sms", phone="+14155550204"))
    ingest(db, tenant.id, inbound("sms", phone="+14155550204", transport="rcs"))
    ingest(db, tenant.id, inbound("whatsapp", sender_id="14155550204", phone="+14155550204"))
    [contact] = live_contacts(db, tenant.id)
    assert len([m for m in message_rows(db, tenant.id) if m.contact_id == contact.id]) == 3


def test_changed_number_keeps_the_contact_and_retires_the_old_one(db: Database) -> None:
    """`user_changed_number`: the new number joins, the old is retired, a new holder is new."""
    tenant = make_tenant(db)
    ingest(
        db,
        tenant.id,
        inbound("whatsapp", sender_id="14155550205", phone="+14155550205", display_name="Wes"),
    )
    notice = inbound(
        "whatsapp",
        sender_id="14155550206",
        phone="+14155550206",
        display_name="ignored for a notice",
        system=True,
        text=None,
        retired=(Identity("whatsapp", "14155550205"), Identity("phone", "+14155550205")),
    )
    ingest(db, tenant.id, notice)
    [contact] = live_contacts(db, tenant.id)
    assert identities_of(db, contact.id) == {("whatsapp", "14155550206"), ("phone", "+14155550206")}
    assert (contact.phone, contact.name) == ("+14155550206", "Wes")
    assert {m.contact_id for m in message_rows(db, tenant.id)} == {contact.id}
    # Whoever has the old number now is another person.
    ingest(db, tenant.id, inbound("whatsapp", sender_id="14155550205", phone="+14155550205"))
    assert len(live_contacts(db, tenant.id)) == 2
    assert identity_count(db, tenant.id) == 4


def test_changed_user_id_moves_to_the_new_bsuid(db: Database) -> None:
    """`user_changed_user_id`: the new BSUID joins, the old one no longer matches."""
    tenant = make_tenant(db)
    ingest(db, tenant.id, inbound("whatsapp", bsuid="US.old", display_name="Xia"))
    ingest(
        db,
        tenant.id,
        inbound(
            "whatsapp", bsuid="US.new", system=True, retired=(Identity("whatsapp_bsuid", "US.old"),)
        ),
    )
    [contact] = live_contacts(db, tenant.id)
    assert identities_of(db, contact.id) == {("whatsapp_bsuid", "US.new")}
    ingest(db, tenant.id, inbound("whatsapp", bsuid="US.new"))
    assert [c.id for c in live_contacts(db, tenant.id)] == [contact.id]


def test_system_notice_from_a_new_sender_is_not_named_by_it(db: Database) -> None:
    """A system notice names no one: a contact it makes is named by the phone, not the notice."""
    tenant = make_tenant(db)
    ingest(
        db,
        tenant.id,
        inbound("whatsapp", phone="+14155550207", display_name="Notice", system=True, text=None),
    )
    [contact] = live_contacts(db, tenant.id)
    assert contact.name == "+14155550207"
    [row] = message_rows(db, tenant.id)
    assert (row.state, row.contact_id) == ("handled", contact.id)


def test_unattested_number_in_text_never_links(db: Database) -> None:
    """A phone that only appears in a message's text links nothing."""
    tenant = make_tenant(db)
    make_contact(db, tenant.id, phone="+14155550208", name="Yan")
    ingest(db, tenant.id, inbound("telegram", sender_id="555", text="call me on +14155550208"))
    assert len(live_contacts(db, tenant.id)) == 2


def test_three_contacts_joined_by_one_message_become_the_oldest(db: Database) -> None:
    """A message whose identities three contacts hold merges all into the oldest."""
    tenant = make_tenant(db)
    oldest = make_contact(db, tenant.id, email="zed@example.com", name="Zed")
    ingest(db, tenant.id, inbound("sms", phone="+14155550209"))
    ingest(db, tenant.id, inbound("telegram", sender_id="999"))
    ingest(
        db,
        tenant.id,
        inbound("telegram", sender_id="999", phone="+14155550209", email="zed@example.com"),
    )
    [contact] = live_contacts(db, tenant.id)
    assert contact.id == oldest
    assert contact.phone == "+14155550209"
    assert len(merges_of(db, tenant.id)) == 2
    assert {m.contact_id for m in message_rows(db, tenant.id)} == {oldest}


def test_link_inside_one_batch_merges_in_order(db: Database) -> None:
    """Two new senders and the message linking them, in one batch, end as one contact."""
    tenant = make_tenant(db)
    ingest(
        db,
        tenant.id,
        inbound("sms", phone="+14155550210"),
        inbound("telegram", sender_id="1010"),
        inbound("telegram", sender_id="1010", phone="+14155550210"),
        inbound("sms", phone="+14155550210"),
    )
    [contact] = live_contacts(db, tenant.id)
    assert len(message_rows(db, tenant.id)) == 4
    assert {m.contact_id for m in message_rows(db, tenant.id)} == {contact.id}
    assert identities_of(db, contact.id) == {("phone", "+14155550210"), ("telegram", "1010")}
