"""Webhook to contact, end to end: a signed POST to the served app, a real `intake worker`
subprocess, real PostgreSQL and Redis, and the result read back through the Contacts API.

One server and one worker serve the whole module; every test makes its own tenant. Waits are
on what the Contacts API shows, with a deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from intake.server import BackgroundServer
from intake.settings import Settings
from models.db import Database
from tests.api.webhook_payloads import (
    SECRETS,
    Expected,
    fresh_message,
    meta_whatsapp,
    signed,
    twilio_sms,
    unique_digits,
)
from tests.factories import TenantFixture, make_tenant
from tests.support import Workers, wait_for, worker_env

pytestmark = pytest.mark.e2e

CONTACTS = "/api/v1/contacts"
WAIT_SECONDS = 20.0


@pytest.fixture(scope="module")
def server(postgres_url: str, redis_url: str) -> Iterator[BackgroundServer]:
    """The app as production runs it: PostgreSQL, Redis broker and locks, on a loopback port."""
    settings = Settings(
        database_url=postgres_url,
        broker_url=redis_url,
        redis_url=redis_url,
        reconcile_after_seconds=2,
    )
    served = BackgroundServer(create_app(settings))
    served.start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def worker(
    postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    workers = Workers(
        worker_env(postgres_url, redis_url, redis_url), tmp_path_factory.mktemp("webhook-worker")
    )
    workers.start(1)
    yield workers
    workers.kill_all()


@pytest.fixture
def http(server: BackgroundServer, worker: Workers) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture
def tenant(postgres_db: Database) -> TenantFixture:
    return make_tenant(postgres_db, **SECRETS)


def deliver(http: httpx.Client, tenant: TenantFixture, route: str, payload: Any) -> None:
    request = signed(route, payload, tenant_id=tenant.id, base_url=str(http.base_url).rstrip("/"))
    response = http.post(request.path, content=request.body, headers=request.headers)
    assert response.status_code == 200, response.text


Snapshot = list[tuple[dict[str, Any], list[dict[str, Any]]]]


def snapshot(http: httpx.Client, tenant: TenantFixture) -> Snapshot:
    """The tenant's contacts, each with its messages, as the Contacts API shows them."""
    listed = http.get(CONTACTS, headers=tenant.auth)
    assert listed.status_code == 200, listed.text
    seen = []
    for contact in listed.json()["data"]:
        page = http.get(f"{CONTACTS}/{contact['id']}/messages", headers=tenant.auth)
        assert page.status_code == 200, page.text
        seen.append((contact, page.json()["data"]))
    return seen


def contacts_with_messages(
    http: httpx.Client, tenant: TenantFixture, worker: Workers, messages: int
) -> Snapshot:
    """The tenant's contacts and their messages, once `messages` of them are visible."""
    wait_for(
        lambda: sum(len(found) for _, found in snapshot(http, tenant)) >= messages,
        timeout=WAIT_SECONDS,
        what=f"{messages} message(s) through the Contacts API\n{worker.logs()}",
    )
    # Read again: the contact may have been listed just before the drain that recorded the
    # last message (and updated the contact in the same transaction) committed.
    return snapshot(http, tenant)


def assert_contact(contact: dict[str, Any], expected: Expected) -> None:
    assert {
        key: contact[key]
        for key in (
            "name",
            "phone",
            "email",
            "source",
            "channelPreference",
            "language",
            "status",
            "role",
        )
    } == {
        "name": expected.name,
        "phone": expected.phone,
        "email": expected.email,
        "source": expected.source,
        "channelPreference": expected.source,
        "language": expected.language,
        "status": "prospect",
        "role": "prospect",
    }


@pytest.mark.parametrize(
    ("route", "via_whatsapp"),
    [
        pytest.param("twilio", False, id="twilio-sms"),
        pytest.param("twilio", True, id="twilio-whatsapp"),
        pytest.param("whatsapp", False, id="meta-whatsapp"),
        pytest.param("telegram", False, id="telegram"),
        pytest.param("email/mailgun", False, id="mailgun"),
        pytest.param("email/raw", False, id="raw-email"),
    ],
)
def test_signed_webhook_becomes_a_contact_with_its_message(
    http: httpx.Client, tenant: TenantFixture, worker: Workers, route: str, via_whatsapp: bool
) -> None:
    """A provider's signed POST ends as one contact, with its fields, and its one message."""
    payload, expected = fresh_message(route, twilio_whatsapp_sender=via_whatsapp)
    deliver(http, tenant, route, payload)
    deliver(http, tenant, route, payload)  # the provider's redelivery changes nothing
    [(contact, messages)] = contacts_with_messages(http, tenant, worker, messages=1)
    assert_contact(contact, expected)
    [message] = messages
    assert message["channel"] == expected.source
    assert message["text"]
    assert contacts_with_messages(http, tenant, worker, messages=1)[0][1] == messages


def test_sms_then_whatsapp_from_one_number_is_one_contact(
    http: httpx.Client, tenant: TenantFixture, worker: Workers
) -> None:
    """The same phone on SMS, then on WhatsApp: one contact, still `source` sms, both messages."""
    phone = f"+1415{unique_digits(7)}"
    deliver(http, tenant, "twilio", twilio_sms(phone=phone, body="Is the flat available?"))
    contacts_with_messages(http, tenant, worker, messages=1)
    deliver(
        http,
        tenant,
        "whatsapp",
        meta_whatsapp(phone=phone, name="Sheena Nelson", text="Can I see it Saturday?"),
    )
    [(contact, messages)] = contacts_with_messages(http, tenant, worker, messages=2)
    assert (contact["phone"], contact["source"]) == (phone, "sms")
    assert contact["name"] == "Sheena Nelson"  # a display name replaces the stand-in phone
    assert sorted(m["channel"] for m in messages) == ["sms", "whatsapp"]


def test_module_runs_its_worker_from_this_checkout(worker: Workers) -> None:
    """The worker subprocess imports this repository's code (PYTHONPATH), not an installed copy."""
    assert worker.env["PYTHONPATH"] == str(Path(__file__).resolve().parents[2])
    assert all(proc.poll() is None for proc in worker.procs)
