"""Tenants, their API keys and their channel secrets."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from models.api_keys import issue_api_key
from models.identity import is_valid_region
from models.schema import Tenant, utcnow
from models.whatsapp_routing import (
    PHONE_NUMBER_ID_KEY,
    parse_phone_number_ids,
    set_phone_number_ids,
)

CHANNEL_SECRETS = frozenset(
    {
        "twilio_auth_token",
        "whatsapp_app_secret",
        "whatsapp_verify_token",
        "telegram_secret_token",
        "mailgun_signing_key",
        "email_webhook_secret",
    }
)
# The longest a replaced secret may stay valid beside its successor.
MAX_KEEP_PREVIOUS = timedelta(days=30)


class TenantNotFoundError(LookupError):
    pass


MAX_TENANT_NAME_LENGTH = 200  # tenants.name


class InvalidTenantSettingError(ValueError):
    pass


@dataclass(frozen=True)
class ChannelSecrets:
    """A tenant's channel secrets, and those replaced with an overlap with when each stops."""

    current: Mapping[str, str]
    previous: Mapping[str, tuple[str, datetime]] = field(default_factory=dict)

    def previous_at(self, now: datetime) -> dict[str, str] | None:
        """The secrets with each replaced one still valid at `now` in its successor's place;
        None when no replaced secret is valid at `now`."""
        valid = {name: value for name, (value, until) in self.previous.items() if now < until}
        return {**self.current, **valid} if valid else None


@dataclass(frozen=True)
class NewTenant:
    tenant: Tenant
    api_key: str  # shown once; only its hash is stored


def create_tenant(session: Session, *, name: str, region: str = "US") -> NewTenant:
    name = name.strip()
    if not name:
        raise InvalidTenantSettingError("a tenant needs a name")
    if len(name) > MAX_TENANT_NAME_LENGTH:
        raise InvalidTenantSettingError(
            f"a tenant name has at most {MAX_TENANT_NAME_LENGTH} characters, not {len(name)}"
        )
    if not is_valid_region(region):
        raise InvalidTenantSettingError(f"unknown region {region!r}: use a two-letter code")
    tenant = Tenant(name=name, region=region.upper(), max_page_size=100, secrets={})
    session.add(tenant)
    session.flush()
    new_key = issue_api_key(session, tenant_id=tenant.id, name="default")
    return NewTenant(tenant=tenant, api_key=new_key.api_key)


def get_tenant(session: Session, *, tenant_id: uuid.UUID) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise TenantNotFoundError(f"no tenant {tenant_id}")
    return tenant


def channel_secrets_of(tenant: Tenant) -> ChannelSecrets:
    previous = {
        name: (entry["value"], datetime.fromisoformat(entry["expires_at"]))
        for name, entry in (tenant.previous_secrets or {}).items()
    }
    return ChannelSecrets(current=dict(tenant.secrets), previous=previous)


def _replace_secret(
    secrets: dict[str, str],
    previous: dict[str, dict[str, str]],
    *,
    name: str,
    value: str,
    keep_until: datetime | None,
) -> None:
    """Set one secret; with `keep_until`, the value it replaces stays valid until then.

    Only the latest replaced value is kept. A replacement without an overlap ends any overlap
    of that secret at once: the operator means only the new one from now on.
    """
    old = secrets.get(name)
    if old == value:
        return
    if keep_until is not None and old:
        previous[name] = {"value": old, "expires_at": keep_until.isoformat()}
    else:
        previous.pop(name, None)
    secrets[name] = value


def configure_tenant(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    values: dict[str, str],
    keep_previous: timedelta | None = None,
    now: datetime | None = None,
) -> Tenant:
    """Set channel secrets (and `region`, `max_page_size`, `events_include_body`); unknown keys
    are refused whole.

    With `keep_previous`, each secret replaced stays valid that long beside the new one.
    """
    if keep_previous is not None and not timedelta(0) < keep_previous <= MAX_KEEP_PREVIOUS:
        raise InvalidTenantSettingError(
            f"keep-previous takes a duration above 0 and up to {MAX_KEEP_PREVIOUS.days} days"
        )
    now = now or utcnow()
    keep_until = now + keep_previous if keep_previous is not None else None
    tenant = get_tenant(session, tenant_id=tenant_id)
    new_secrets = dict(tenant.secrets)
    # Overlaps already over are dropped here, so the column only ever holds a few live entries.
    previous = {
        name: entry
        for name, entry in (tenant.previous_secrets or {}).items()
        if datetime.fromisoformat(entry["expires_at"]) > now
    }
    for key, value in values.items():
        if key in CHANNEL_SECRETS:
            _replace_secret(new_secrets, previous, name=key, value=value, keep_until=keep_until)
        elif key == "region":
            if not is_valid_region(value):
                raise InvalidTenantSettingError(f"unknown region {value!r}")
            tenant.region = value.upper()
        elif key == "max_page_size":
            if not value.isdigit() or not 1 <= int(value) <= 1000:
                raise InvalidTenantSettingError("max_page_size takes a whole number 1-1000")
            tenant.max_page_size = int(value)
        elif key == PHONE_NUMBER_ID_KEY:
            # Its own table, not a secret: the shared WhatsApp route looks tenants up by it.
            set_phone_number_ids(
                session, tenant_id=tenant.id, phone_number_ids=parse_phone_number_ids(value)
            )
        elif key == "events_include_body":
            if value not in ("0", "1"):
                raise InvalidTenantSettingError("events_include_body takes 1 (on) or 0 (off)")
            tenant.events_include_body = value == "1"
        else:
            known = ", ".join(
                sorted(
                    [
                        *CHANNEL_SECRETS,
                        "region",
                        "max_page_size",
                        "events_include_body",
                        PHONE_NUMBER_ID_KEY,
                    ]
                )
            )
            raise InvalidTenantSettingError(f"unknown key {key!r}; known keys: {known}")
    tenant.secrets = new_secrets
    tenant.previous_secrets = previous or None
    session.flush()
    return tenant
