"""The identities table: one active identity per tenant, enforced by the database itself, and
migration 0002 carrying the old data over."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.exc import IntegrityError

from models.db import Database
from models.migrate import upgrade
from models.schema import ContactIdentity, utcnow
from tests.conftest import PG_ADMIN_DSN
from tests.factories import make_contact, make_tenant


def raw_identity(
    db: Database, tenant_id: uuid.UUID, contact_id: uuid.UUID, **fields: object
) -> None:
    """Insert an identity row with Core, past every check of ours."""
    with db.unit_of_work() as session:
        session.execute(
            insert(ContactIdentity).values(
                id=uuid.uuid4(),
                tenant_id=tenant_id,
                contact_id=contact_id,
                created_at=utcnow(),
                **fields,
            )
        )


def test_database_refuses_one_identity_on_two_contacts(db: Database) -> None:
    """A raw insert of an active identity another contact holds is refused by the index."""
    tenant = make_tenant(db)
    first = make_contact(db, tenant.id, name="A")
    second = make_contact(db, tenant.id, name="B")
    raw_identity(db, tenant.id, first, kind="telegram", value="123")
    with pytest.raises(IntegrityError):
        raw_identity(db, tenant.id, second, kind="telegram", value="123")


def test_retired_identity_frees_its_value(db: Database) -> None:
    """A retired row does not count: the value may be held again, as often as it is retired."""
    tenant = make_tenant(db)
    first = make_contact(db, tenant.id, name="A")
    second = make_contact(db, tenant.id, name="B")
    gone = datetime.now(UTC)
    raw_identity(db, tenant.id, first, kind="phone", value="+14155550300", retired_at=gone)
    raw_identity(db, tenant.id, first, kind="phone", value="+14155550300", retired_at=gone)
    raw_identity(db, tenant.id, second, kind="phone", value="+14155550300")


def test_same_identity_in_two_tenants_and_two_kinds_is_fine(db: Database) -> None:
    """Uniqueness is per tenant and per kind."""
    tenant, other = make_tenant(db), make_tenant(db)
    mine = make_contact(db, tenant.id, name="A")
    theirs = make_contact(db, other.id, name="B")
    raw_identity(db, tenant.id, mine, kind="telegram", value="77")
    raw_identity(db, other.id, theirs, kind="telegram", value="77")
    raw_identity(db, tenant.id, mine, kind="whatsapp", value="77")


@pytest.fixture(params=["sqlite", "postgresql"])
def blank_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of this test's own, to migrate step by step."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'steps.db'}"
        return
    name = f"intake_steps_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN + " dbname=postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    params = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_DSN)
    yield (
        f"postgresql+psycopg://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}"
        f":{params.get('port', 5432)}/{name}"
    )
    with psycopg.connect(PG_ADMIN_DSN + " dbname=postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migration_0002_turns_old_data_into_identities(blank_url: str) -> None:
    """Phones, emails and sender ids of 0001 become identities; a deleted contact's are retired."""
    upgrade(blank_url, "0001")
    engine = create_engine(blank_url)
    tenant, live, deleted = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ids = {"t": tenant.hex, "live": live.hex, "deleted": deleted.hex}
    if engine.dialect.name == "postgresql":
        ids = {"t": str(tenant), "live": str(live), "deleted": str(deleted)}
    stamp = "2026-11-30 00:00:00" + ("+00" if engine.dialect.name == "postgresql" else "")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO tenants (id, name, region, max_page_size, secrets, created_at) "
                "VALUES (:t, 'old', 'US', 100, '{}', :now)"
            ),
            {**ids, "now": stamp},
        )
        for key, phone, email, deleted_at in (
            ("live", "+14155550400", "old@example.com", None),
            ("deleted", "+14155550400", None, stamp),
        ):
            connection.execute(
                text(
                    "INSERT INTO contacts (id, tenant_id, name, email, phone, status, role, "
                    "source, language, created_at, updated_at, deleted_at) VALUES (:id, :t, 'n', "
                    ":email, :phone, 'prospect', 'prospect', 'sms', 'en', :now, :now, :deleted)"
                ),
                {
                    "id": ids[key],
                    **ids,
                    "email": email,
                    "phone": phone,
                    "now": stamp,
                    "deleted": deleted_at,
                },
            )
        connection.execute(
            text(
                "INSERT INTO contact_identities (id, tenant_id, contact_id, channel, sender_id, "
                "created_at) VALUES (:id, :t, :live, 'telegram', '4711', :now)"
            ),
            {
                **ids,
                "id": uuid.uuid4().hex if engine.dialect.name == "sqlite" else str(uuid.uuid4()),
                "now": stamp,
            },
        )
    upgrade(blank_url, "head")
    migrated = Database(blank_url)
    with migrated.sessions() as session:
        rows = session.execute(
            select(
                ContactIdentity.contact_id,
                ContactIdentity.kind,
                ContactIdentity.value,
                ContactIdentity.retired_at,
            )
        )
        found = {(r.contact_id, r.kind, r.value, r.retired_at is None) for r in rows}
    migrated.dispose()
    engine.dispose()
    assert found == {
        (live, "phone", "+14155550400", True),
        (live, "email", "old@example.com", True),
        (live, "telegram", "4711", True),
        (deleted, "phone", "+14155550400", False),
    }
