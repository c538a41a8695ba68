"""API keys: several per tenant, stored as hashes, revoked for good, their use recorded cheaply."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from models.api_keys import (
    ApiKeyNotFoundError,
    InvalidApiKeyNameError,
    hash_api_key,
    holder_of_api_key,
    issue_api_key,
    list_api_keys,
    record_api_key_use,
    revoke_api_key,
)
from models.db import Database
from models.schema import ApiKey, utcnow
from tests.factories import make_tenant


def test_several_keys_each_authenticate_their_tenant(db: Database) -> None:
    """A second key of a tenant finds that tenant, as the first does; only hashes are stored."""
    tenant = make_tenant(db)
    with db.unit_of_work() as session:
        second = issue_api_key(session, tenant_id=tenant.id, name="  CRM sync ")
    with db.sessions() as session:
        holders = [holder_of_api_key(session, api_key=k) for k in (tenant.api_key, second.api_key)]
        stored = set(session.scalars(select(ApiKey.key_hash).where(ApiKey.tenant_id == tenant.id)))
    assert [h.tenant.id if h else None for h in holders] == [tenant.id, tenant.id]
    assert second.key.name == "CRM sync"
    assert stored == {hash_api_key(tenant.api_key), hash_api_key(second.api_key)}
    assert tenant.api_key not in stored
    assert second.api_key not in stored


def test_a_revoked_key_finds_no_tenant_and_the_others_still_do(db: Database) -> None:
    """After a revoke the key is refused; the tenant's other key is untouched."""
    tenant = make_tenant(db)
    with db.unit_of_work() as session:
        second = issue_api_key(session, tenant_id=tenant.id)
    with db.unit_of_work() as session:
        key, revoked_now = revoke_api_key(session, key_id=second.key.id)
    assert revoked_now
    assert key.revoked_at is not None
    with db.sessions() as session:
        assert holder_of_api_key(session, api_key=second.api_key) is None
        assert holder_of_api_key(session, api_key=tenant.api_key) is not None


def test_revoking_twice_keeps_the_first_time(db: Database) -> None:
    """A second revoke changes nothing and says the key already was revoked."""
    tenant = make_tenant(db)
    with db.unit_of_work() as session:
        new = issue_api_key(session, tenant_id=tenant.id)
    first = utcnow() - timedelta(hours=1)
    with db.unit_of_work() as session:
        revoke_api_key(session, key_id=new.key.id, now=first)
    with db.unit_of_work() as session:
        key, revoked_now = revoke_api_key(session, key_id=new.key.id)
    assert (revoked_now, key.revoked_at) == (False, first)


def test_revoking_an_unknown_key_is_an_error(db: Database) -> None:
    """A key id that does not exist is named in the error."""
    missing = uuid.uuid4()
    with db.unit_of_work() as session, pytest.raises(ApiKeyNotFoundError, match=str(missing)):
        revoke_api_key(session, key_id=missing)


def test_list_shows_only_the_tenants_own_keys_oldest_first(db: Database) -> None:
    """Listing is tenant-scoped and includes revoked keys, so they can be audited."""
    tenant, other = make_tenant(db), make_tenant(db)
    with db.unit_of_work() as session:
        named = issue_api_key(session, tenant_id=tenant.id, name="zapier")
        revoke_api_key(session, key_id=named.key.id)
    with db.sessions() as session:
        keys = list_api_keys(session, tenant_id=tenant.id)
        theirs = list_api_keys(session, tenant_id=other.id)
    assert [(k.name, k.revoked_at is not None) for k in keys] == [
        ("default", False),
        ("zapier", True),
    ]
    assert {k.tenant_id for k in keys} == {tenant.id}
    assert {k.id for k in keys}.isdisjoint(k.id for k in theirs)


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
def test_a_blank_or_overlong_name_is_refused(db: Database, name: str) -> None:
    """Key names are for people: blank or over 100 characters is an error, and nothing is made."""
    tenant = make_tenant(db)
    with db.unit_of_work() as session, pytest.raises(InvalidApiKeyNameError):
        issue_api_key(session, tenant_id=tenant.id, name=name)
    with db.sessions() as session:
        assert len(list_api_keys(session, tenant_id=tenant.id)) == 1


def test_use_is_recorded_at_most_once_a_minute(db: Database) -> None:
    """`last_used_at` is written on first use, not again within a minute, then again after."""
    tenant = make_tenant(db)
    with db.sessions() as session:
        holder = holder_of_api_key(session, api_key=tenant.api_key)
    assert holder is not None
    assert holder.use_is_unrecorded(utcnow())
    start = utcnow()
    written = []
    for offset in (0, 30, 59, 60, 61):
        with db.unit_of_work() as session:
            moment = start + timedelta(seconds=offset)
            written.append(record_api_key_use(session, key_id=holder.key_id, now=moment))
    assert written == [True, False, False, True, False]
    with db.sessions() as session:
        again = holder_of_api_key(session, api_key=tenant.api_key)
    assert again is not None
    assert again.last_used_at == start + timedelta(seconds=60)
    assert not again.use_is_unrecorded(start + timedelta(seconds=119))
    assert again.use_is_unrecorded(start + timedelta(seconds=120))
