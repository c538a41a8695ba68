"""The app under test, built on the parametrized `db` (SQLite and PostgreSQL), and helpers."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from intake.settings import Settings
from models.db import Database
from models.schema import Message, utcnow
from tests.factories import TenantFixture, make_tenant

CONTACTS = "/api/v1/contacts"


@pytest.fixture
def app(db: Database) -> FastAPI:
    return create_app(Settings(database_url=db.url), db=db)


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app)


@pytest.fixture
def tenant(db: Database) -> TenantFixture:
    return make_tenant(db)


@pytest.fixture
def other_tenant(db: Database) -> TenantFixture:
    return make_tenant(db)


def unique_phone() -> str:
    """A US number no other test uses (555-01xx is fictional, so vary the exchange too)."""
    digits = f"{uuid.uuid4().int % 10**7:07d}"
    return f"+1212{digits}"


def unique_email() -> str:
    return f"{uuid.uuid4().hex[:12]}@example.com"


def create(client: TestClient, tenant: TenantFixture, **fields: Any) -> dict[str, Any]:
    """POST a contact (name and email filled in unless given) and return its JSON; must be 201."""
    fields.setdefault("name", "Jane Smith")
    if "email" not in fields and "phone" not in fields:
        fields["email"] = unique_email()
    response = client.post(CONTACTS, json=fields, headers=tenant.auth)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def make_message(
    db: Database,
    tenant_id: uuid.UUID,
    contact_id: uuid.UUID | None,
    *,
    state: str = "handled",
    received_at: datetime | None = None,
    body: str | None = "Is the flat still available?",
    channel: str = "sms",
    media: list[dict[str, Any]] | None = None,
) -> uuid.UUID:
    received = received_at or utcnow()
    with db.unit_of_work() as session:
        message = Message(
            tenant_id=tenant_id,
            channel=channel,
            provider_message_id=f"SM{uuid.uuid4().hex}",
            contact_id=contact_id,
            body=body,
            media=media or [],
            payload={},
            received_at=received,
            accepted_at=received,
            state=state,
        )
        session.add(message)
        session.flush()
        return message.id


@pytest.fixture
def live_server(app: FastAPI) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port, for requests that really overlap."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        assert thread.is_alive(), "uvicorn exited while starting"
        time.sleep(0.01)  # polling a condition with a deadline, not a fixed wait
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
