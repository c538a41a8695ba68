"""Channel secrets replaced with an overlap: the old one stays valid until then, and no longer."""

from __future__ import annotations

from datetime import timedelta

import pytest

from models.db import Database
from models.schema import Tenant, utcnow
from models.tenants import (
    ChannelSecrets,
    InvalidTenantSettingError,
    channel_secrets_of,
    configure_tenant,
)
from tests.factories import make_tenant

DAY = timedelta(hours=24)


def secrets_of(db: Database, tenant_id: object) -> ChannelSecrets:
    with db.sessions() as session:
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        return channel_secrets_of(tenant)


def test_a_replaced_secret_is_valid_until_the_overlap_ends(db: Database) -> None:
    """With keep_previous the old value stands beside the new one until exactly then."""
    tenant = make_tenant(db, twilio_auth_token="old", telegram_secret_token="tg")
    now = utcnow()
    with db.unit_of_work() as session:
        configure_tenant(
            session,
            tenant_id=tenant.id,
            values={"twilio_auth_token": "new"},
            keep_previous=DAY,
            now=now,
        )
    secrets = secrets_of(db, tenant.id)
    assert secrets.current == {"twilio_auth_token": "new", "telegram_secret_token": "tg"}
    assert secrets.previous_at(now + DAY - timedelta(seconds=1)) == {
        "twilio_auth_token": "old",
        "telegram_secret_token": "tg",
    }
    assert secrets.previous_at(now + DAY) is None
    assert secrets.previous_at(now + 2 * DAY) is None


def test_replacing_without_overlap_ends_an_overlap_at_once(db: Database) -> None:
    """A plain replacement during an overlap leaves only the newest secret valid."""
    tenant = make_tenant(db, mailgun_signing_key="one")
    now = utcnow()
    for value, keep in (("two", DAY), ("three", None)):
        with db.unit_of_work() as session:
            configure_tenant(
                session,
                tenant_id=tenant.id,
                values={"mailgun_signing_key": value},
                keep_previous=keep,
                now=now,
            )
    secrets = secrets_of(db, tenant.id)
    assert secrets.current["mailgun_signing_key"] == "three"
    assert secrets.previous_at(now) is None


def test_only_the_latest_replaced_value_is_kept(db: Database) -> None:
    """Two rotations with overlap: the value replaced last is the previous one, not the first."""
    tenant = make_tenant(db, email_webhook_secret="one")
    now = utcnow()
    for value in ("two", "three"):
        with db.unit_of_work() as session:
            configure_tenant(
                session,
                tenant_id=tenant.id,
                values={"email_webhook_secret": value},
                keep_previous=DAY,
                now=now,
            )
    assert secrets_of(db, tenant.id).previous_at(now) == {"email_webhook_secret": "two"}


def test_setting_the_same_value_or_a_first_value_keeps_nothing(db: Database) -> None:
    """No secret is replaced, so nothing previous is kept."""
    tenant = make_tenant(db, twilio_auth_token="same")
    now = utcnow()
    with db.unit_of_work() as session:
        configure_tenant(
            session,
            tenant_id=tenant.id,
            values={"twilio_auth_token": "same", "whatsapp_app_secret": "first"},
            keep_previous=DAY,
            now=now,
        )
    secrets = secrets_of(db, tenant.id)
    assert secrets.previous == {}
    assert secrets.previous_at(now) is None


def test_expired_overlaps_are_dropped_on_the_next_configure(db: Database) -> None:
    """The stored previous secrets only hold overlaps still running."""
    tenant = make_tenant(db, twilio_auth_token="a", telegram_secret_token="x")
    start = utcnow()
    with db.unit_of_work() as session:
        configure_tenant(
            session,
            tenant_id=tenant.id,
            values={"twilio_auth_token": "b"},
            keep_previous=timedelta(minutes=5),
            now=start,
        )
    later = start + timedelta(hours=1)
    with db.unit_of_work() as session:
        configure_tenant(
            session,
            tenant_id=tenant.id,
            values={"telegram_secret_token": "y"},
            keep_previous=DAY,
            now=later,
        )
    assert set(secrets_of(db, tenant.id).previous) == {"telegram_secret_token"}


@pytest.mark.parametrize("keep", [timedelta(0), timedelta(seconds=-1), timedelta(days=31)])
def test_an_overlap_out_of_bounds_is_refused(db: Database, keep: timedelta) -> None:
    """keep_previous must be above zero and at most 30 days; the secret is left unchanged."""
    tenant = make_tenant(db, twilio_auth_token="old")
    with db.unit_of_work() as session, pytest.raises(InvalidTenantSettingError):
        configure_tenant(
            session, tenant_id=tenant.id, values={"twilio_auth_token": "new"}, keep_previous=keep
        )
    assert secrets_of(db, tenant.id).current == {"twilio_auth_token": "old"}
