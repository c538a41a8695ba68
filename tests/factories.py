"""Small factories: each test makes its own tenants and contacts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from models.db import Database
from models.identities import PRIMARY_KINDS, add_identity
from models.schema import Contact
from models.tenants import configure_tenant, create_tenant


@dataclass(frozen=True)
class TenantFixture:
    id: uuid.UUID
    api_key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def make_tenant(db: Database, *, region: str = "US", **secrets: str) -> TenantFixture:
    with db.unit_of_work() as session:
        new = create_tenant(session, name=f"tenant-{uuid.uuid4().hex[:8]}", region=region)
        if secrets:
            configure_tenant(session, tenant_id=new.tenant.id, values=secrets)
        return TenantFixture(id=new.tenant.id, api_key=new.api_key)


def make_contact(db: Database, tenant_id: uuid.UUID, **fields: Any) -> uuid.UUID:
    fields.setdefault("name", "Jane Smith")
    if "email" not in fields and "phone" not in fields:
        fields["email"] = f"{uuid.uuid4().hex[:10]}@example.com"
    with db.unit_of_work() as session:
        contact = Contact(tenant_id=tenant_id, **fields)
        session.add(contact)
        session.flush()
        # Its primary phone and email are identities, as create_contact makes them.
        for kind in PRIMARY_KINDS:
            if fields.get(kind):
                add_identity(
                    session,
                    tenant_id=tenant_id,
                    contact_id=contact.id,
                    kind=kind,
                    value=fields[kind],
                    now=contact.created_at,
                )
        session.flush()
        return contact.id
