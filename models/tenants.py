"""Tenants, their API keys and their channel secrets."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.identity import is_valid_region
from models.schema import ApiKey, Tenant

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
API_KEY_PREFIX = "intk_"


class TenantNotFoundError(LookupError):
    pass


class InvalidTenantSettingError(ValueError):
    pass


@dataclass(frozen=True)
class NewTenant:
    tenant: Tenant
    api_key: str  # shown once; only its hash is stored


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def create_tenant(session: Session, *, name: str, region: str = "US") -> NewTenant:
    name = name.strip()
    if not name:
        raise InvalidTenantSettingError("a tenant needs a name")
    if not is_valid_region(region):
        raise InvalidTenantSettingError(f"unknown region {region!r}: use a two-letter code")
    tenant = Tenant(name=name, region=region.upper(), max_page_size=100, secrets={})
    session.add(tenant)
    session.flush()
    return NewTenant(tenant=tenant, api_key=issue_api_key(session, tenant_id=tenant.id))


def issue_api_key(session: Session, *, tenant_id: uuid.UUID) -> str:
    api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant_id, key_hash=hash_api_key(api_key)))
    session.flush()
    return api_key


def get_tenant(session: Session, *, tenant_id: uuid.UUID) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise TenantNotFoundError(f"no tenant {tenant_id}")
    return tenant


def tenant_for_api_key(session: Session, *, api_key: str) -> Tenant | None:
    return session.scalars(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_api_key(api_key), ApiKey.revoked_at.is_(None))
    ).one_or_none()


def configure_tenant(session: Session, *, tenant_id: uuid.UUID, values: dict[str, str]) -> Tenant:
    """Set channel secrets (and `region`, `max_page_size`, `events_include_body`); unknown keys
    are refused whole."""
    tenant = get_tenant(session, tenant_id=tenant_id)
    new_secrets = dict(tenant.secrets)
    for key, value in values.items():
        if key in CHANNEL_SECRETS:
            new_secrets[key] = value
        elif key == "region":
            if not is_valid_region(value):
                raise InvalidTenantSettingError(f"unknown region {value!r}")
            tenant.region = value.upper()
        elif key == "max_page_size":
            if not value.isdigit() or not 1 <= int(value) <= 1000:
                raise InvalidTenantSettingError("max_page_size takes a whole number 1-1000")
            tenant.max_page_size = int(value)
        elif key == "events_include_body":
            if value not in ("0", "1"):
                raise InvalidTenantSettingError("events_include_body takes 1 (on) or 0 (off)")
            tenant.events_include_body = value == "1"
        else:
            known = ", ".join(
                sorted([*CHANNEL_SECRETS, "region", "max_page_size", "events_include_body"])
            )
            raise InvalidTenantSettingError(f"unknown key {key!r}; known keys: {known}")
    tenant.secrets = new_secrets
    session.flush()
    return tenant
