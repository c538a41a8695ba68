"""`intake tenant configure … whatsapp_phone_number_id=…`, `events unrouted` and `events replay`
of unrouted changes, run as the operator runs them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from sqlalchemy import select

from channels.whatsapp_shared import parse_shared_notification
from models.db import Database
from models.schema import Message, UnroutedWhatsAppChange
from models.whatsapp_routing import NewUnroutedChange, phone_number_ids_of, store_unrouted
from tests.api.whatsapp_shared_payloads import (
    message_change,
    notification,
    register,
    unique_phone_number_id,
    wamid_of,
)
from tests.cli.test_cli import assert_one_line_error, intake
from tests.factories import make_tenant


def keep_unrouted(db: Database, phone_number_id: str) -> tuple[uuid.UUID, str]:
    """An unrouted change stored as the shared route stores it; its id and message's wamid."""
    change = message_change(phone_number_id)
    shared = parse_shared_notification(notification([change]))
    [parsed] = shared.by_phone_number_id[phone_number_id]
    with db.unit_of_work() as session:
        store_unrouted(
            session,
            changes=[
                NewUnroutedChange(
                    phone_number_id=phone_number_id,
                    entry_id=parsed.change.entry_id,
                    change=parsed.change.raw,
                    change_key=parsed.change.key,
                    message_count=len(parsed.parsed.messages),
                )
            ],
        )
        change_id = session.scalars(
            select(UnroutedWhatsAppChange.id).where(
                UnroutedWhatsAppChange.change_key == parsed.change.key
            )
        ).one()
    return change_id, wamid_of(change)


def wamids(db: Database, tenant_id: uuid.UUID) -> list[str]:
    with db.sessions() as session:
        return list(
            session.scalars(
                select(Message.provider_message_id).where(Message.tenant_id == tenant_id)
            )
        )


def test_configure_registers_numbers_and_replaces_them(db: Database) -> None:
    """The value is the tenant's whole set of numbers: several comma-separated, empty none."""
    tenant = make_tenant(db)
    first, second = unique_phone_number_id(), unique_phone_number_id()
    result = intake(
        "tenant",
        "configure",
        str(tenant.id),
        f"whatsapp_phone_number_id={first}, {second}",
        database_url=db.url,
    )
    assert result.returncode == 0, result.stderr
    with db.sessions() as session:
        assert phone_number_ids_of(session, tenant_id=tenant.id) == sorted([first, second])
    register(db, tenant.id, second)
    with db.sessions() as session:
        assert phone_number_ids_of(session, tenant_id=tenant.id) == [second]
    register(db, tenant.id)
    with db.sessions() as session:
        assert phone_number_ids_of(session, tenant_id=tenant.id) == []


def test_number_of_another_tenant_is_a_one_line_error_naming_it(db: Database) -> None:
    """A number is one tenant's: registering it for a second names the first, changes nothing."""
    owner, other = make_tenant(db), make_tenant(db)
    number, spare = unique_phone_number_id(), unique_phone_number_id()
    register(db, owner.id, number)
    result = intake(
        "tenant",
        "configure",
        str(other.id),
        f"whatsapp_phone_number_id={spare},{number}",
        database_url=db.url,
    )
    assert_one_line_error(result, f"{number} is already registered to tenant {owner.id}")
    with db.sessions() as session:
        assert phone_number_ids_of(session, tenant_id=other.id) == []
        assert phone_number_ids_of(session, tenant_id=owner.id) == [number]


def test_malformed_number_is_a_one_line_error(db: Database) -> None:
    """A phone number id is Meta's numeric id, not a phone number with a plus."""
    tenant = make_tenant(db)
    result = intake(
        "tenant",
        "configure",
        str(tenant.id),
        "whatsapp_phone_number_id=+15550783881",
        database_url=db.url,
    )
    assert_one_line_error(result, "whatsapp_phone_number_id takes Meta's numeric phone number id")


def test_events_unrouted_lists_id_number_received_and_message_count(db: Database) -> None:
    """`events unrouted` (and `--json`) show each waiting change, never its messages."""
    number = unique_phone_number_id()
    change_id, wamid = keep_unrouted(db, number)
    plain = intake("events", "unrouted", database_url=db.url)
    assert plain.returncode == 0, plain.stderr
    [line] = [ln for ln in plain.stdout.splitlines() if ln.startswith(str(change_id))]
    assert f"phone_number_id={number}" in line
    assert "messages=1" in line
    assert wamid not in plain.stdout
    listed = json.loads(intake("events", "unrouted", "--json", database_url=db.url).stdout)
    [entry] = [e for e in listed if e["id"] == str(change_id)]
    assert (entry["phone_number_id"], entry["message_count"]) == (number, 1)
    assert set(entry) == {"id", "phone_number_id", "received_at", "message_count"}


def test_replay_of_an_unrouted_change_routes_it_once_registered(
    db: Database, tmp_path: Path
) -> None:
    """Replay is a one-line error while nobody has the number, then routes it to its tenant."""
    tenant = make_tenant(db)
    number = unique_phone_number_id()
    change_id, wamid = keep_unrouted(db, number)
    early = intake("events", "replay", str(change_id), database_url=db.url, cwd=tmp_path)
    assert_one_line_error(early, f"no tenant has registered phone_number_id {number}")
    assert wamids(db, tenant.id) == []

    register(db, tenant.id, number)
    replayed = intake("events", "replay", str(change_id), database_url=db.url, cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert "routed 1 unrouted change(s): 1 new message(s)" in replayed.stdout
    assert wamids(db, tenant.id) == [wamid]
    listed = intake("events", "unrouted", database_url=db.url).stdout
    assert str(change_id) not in listed
    again = intake("events", "replay", str(change_id), database_url=db.url, cwd=tmp_path)
    assert_one_line_error(again, "already replayed")


def test_replay_with_an_unknown_id_beside_an_unrouted_one_changes_nothing(
    db: Database, tmp_path: Path
) -> None:
    """All or nothing: an id that names nothing refuses the whole replay."""
    tenant = make_tenant(db)
    number = unique_phone_number_id()
    change_id, _ = keep_unrouted(db, number)
    register(db, tenant.id, number)
    result = intake(
        "events",
        "replay",
        str(change_id),
        str(uuid.uuid4()),
        database_url=db.url,
        cwd=tmp_path,
    )
    assert_one_line_error(result, "no failed message")
    assert wamids(db, tenant.id) == []
    assert str(change_id) in intake("events", "unrouted", database_url=db.url).stdout
