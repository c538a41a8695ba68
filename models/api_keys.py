"""A tenant's API keys: issued, listed, revoked, and checked on every Contacts API request.

Only a key's SHA-256 is stored. A request looks its key up by that hash (a unique index), with
`revoked_at` in the same query, so a revocation is refused by every app process on its next
request: there is no cache of keys to outlive it.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from models.schema import ApiKey, Tenant, utcnow

API_KEY_PREFIX = "intk_"
MAX_NAME_LENGTH = 100
# `last used` is for people deciding which key to revoke: minute precision is plenty, and it
# keeps authentication a read on all but one request a minute per key.
LAST_USED_PRECISION = timedelta(minutes=1)


class ApiKeyNotFoundError(LookupError):
    pass


class InvalidApiKeyNameError(ValueError):
    pass


@dataclass(frozen=True)
class NewApiKey:
    key: ApiKey
    api_key: str  # shown once; only its hash is stored


@dataclass(frozen=True)
class KeyHolder:
    """The tenant a presented key belongs to, and what is needed to record its use."""

    tenant: Tenant
    key_id: uuid.UUID
    last_used_at: datetime | None

    def use_is_unrecorded(self, now: datetime) -> bool:
        return self.last_used_at is None or now - self.last_used_at >= LAST_USED_PRECISION


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def _clean_name(name: str | None) -> str | None:
    if name is None:
        return None
    name = name.strip()
    if not name:
        raise InvalidApiKeyNameError("a key name cannot be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidApiKeyNameError(f"a key name has at most {MAX_NAME_LENGTH} characters")
    return name


def issue_api_key(session: Session, *, tenant_id: uuid.UUID, name: str | None = None) -> NewApiKey:
    """A new key for an existing tenant (the caller checks the tenant exists)."""
    api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(tenant_id=tenant_id, key_hash=hash_api_key(api_key), name=_clean_name(name))
    session.add(key)
    session.flush()
    return NewApiKey(key=key, api_key=api_key)


def list_api_keys(session: Session, *, tenant_id: uuid.UUID) -> list[ApiKey]:
    """The tenant's keys, revoked ones too, oldest first."""
    return list(
        session.scalars(
            select(ApiKey)
            .where(ApiKey.tenant_id == tenant_id)
            .order_by(ApiKey.created_at, ApiKey.id)
        )
    )


def revoke_api_key(
    session: Session, *, key_id: uuid.UUID, now: datetime | None = None
) -> tuple[ApiKey, bool]:
    """Revoke a key; (the key, True) if this call revoked it, (the key, False) if it already was.

    By key id alone, across tenants: an operator's command, and key ids are random UUIDs.
    """
    key = session.get(ApiKey, key_id, with_for_update=True)
    if key is None:
        raise ApiKeyNotFoundError(f"no API key {key_id}")
    if key.revoked_at is not None:
        return key, False
    key.revoked_at = now or utcnow()
    session.flush()
    return key, True


def holder_of_api_key(session: Session, *, api_key: str) -> KeyHolder | None:
    """The tenant of a key that is not revoked, or None: one indexed lookup by hash."""
    row = session.execute(
        select(Tenant, ApiKey.id, ApiKey.last_used_at)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_api_key(api_key), ApiKey.revoked_at.is_(None))
    ).one_or_none()
    if row is None:
        return None
    return KeyHolder(tenant=row[0], key_id=row[1], last_used_at=row[2])


def record_api_key_use(session: Session, *, key_id: uuid.UUID, now: datetime) -> bool:
    """Set `last_used_at` unless another request did within the last minute; True if set.

    The condition is in the UPDATE, so concurrent requests of many processes write it once.
    """
    result = session.execute(
        update(ApiKey)
        .where(
            ApiKey.id == key_id,
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - LAST_USED_PRECISION),
        )
        .values(last_used_at=now)
    )
    return bool(getattr(result, "rowcount", 0))
