"""The 2026 provider payloads through the served webhook routes, on SQLite and PostgreSQL.

Each recorded payload of tests/payloads/ that the adapters learned to read (business-scoped
WhatsApp ids, RCS, Telegram Business, UTF-8 and automated mail, Mailgun body-mime and events)
is signed as its provider signs it and posted to the app: a person's message is stored with
exactly the identities the adapter attests, and what is not a person is a 200, stores nothing
and is counted under its reason.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from api.app import create_app
from channels import mailgun
from channels.base import InboundMessage
from intake.settings import Settings
from intake.signing import SignedRequest
from models.db import Database
from models.schema import Message
from tests.api.webhook_payloads import SECRETS, signed
from tests.factories import TenantFixture, make_tenant

BASE = "http://testserver"
PAYLOADS = Path(__file__).parent.parent / "payloads"
SIGNATURE_FIELDS = ("timestamp", "token", "signature")
CHANNEL_LABEL = {"twilio": "twilio", "whatsapp": "whatsapp", "telegram": "telegram"}


@pytest.fixture
def client(db: Database, tmp_path: Path) -> TestClient:
    settings = Settings(database_url=db.url, broker_url=f"sqla+sqlite:///{tmp_path}/broker.db")
    app: FastAPI = create_app(settings, db=db)
    return TestClient(app, base_url=BASE)


@pytest.fixture
def tenant(db: Database) -> TenantFixture:
    return make_tenant(db, **SECRETS)


def recorded(route: str, name: str) -> Any:
    """The recorded payload as `intake.signing.sign_request` takes it for its route."""
    raw = (PAYLOADS / route / name).read_bytes()
    if route in ("whatsapp", "telegram"):
        return json.loads(raw)
    if route in ("twilio", "email/mailgun"):
        fields = dict(parse_qsl(raw.decode("ascii"), keep_blank_values=True))
        return {k: v for k, v in fields.items() if k not in SIGNATURE_FIELDS}
    return raw


def post(client: TestClient, request: SignedRequest) -> httpx.Response:
    response: httpx.Response = client.post(
        request.path, content=request.body, headers=request.headers
    )
    return response


def stored(db: Database, tenant_id: uuid.UUID) -> list[InboundMessage]:
    with db.sessions() as session:
        rows = session.scalars(select(Message).where(Message.tenant_id == tenant_id))
        return [InboundMessage.from_json(row.payload) for row in rows]


def ignored_count(client: TestClient, channel: str, reason: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "intake_webhooks_ignored_total" and sample.labels == {
                "channel": channel,
                "reason": reason,
            }:
                return sample.value
    return 0.0


PEOPLE = [
    ("whatsapp", "bsuid_only.json", ("whatsapp", "US.13491208655302741918", None, None)),
    (
        "whatsapp",
        "bsuid_with_wa_id.json",
        ("whatsapp", "US.13491208655302741918", "+16505551234", None),
    ),
    (
        "whatsapp",
        "contact_request.json",
        ("whatsapp", "US.13491208655302741918", "+16505551234", None),
    ),
    ("whatsapp", "shared_contacts.json", ("whatsapp", None, "+16505551234", None)),
    (
        "whatsapp",
        "changed_number.json",
        ("whatsapp", "US.99887766554433221100", "+12195555358", None),
    ),
    ("whatsapp", "changed_user_id.json", ("whatsapp", "US.55443322110099887766", None, None)),
    ("whatsapp", "group.json", ("whatsapp", None, "+16505551234", None)),
    ("whatsapp", "mexico.json", ("whatsapp", None, "+5215512345678", None)),
    ("twilio", "rcs_text.form", ("sms", None, "+14155552671", None)),
    ("twilio", "whatsapp_bsuid.form", ("whatsapp", "US.13491208655302741918", None, None)),
    (
        "twilio",
        "whatsapp_bsuid_with_phone.form",
        ("whatsapp", "US.13491208655302741918", "+16505551234", None),
    ),
    ("twilio", "whatsapp_mexico.form", ("whatsapp", None, "+5215512345678", None)),
    ("telegram", "business_message.json", ("telegram", None, None, None)),
    ("telegram", "no_is_bot.json", ("telegram", None, None, None)),
    ("email/raw", "utf8_headers.eml", ("email", None, None, "jörg.müller@bücher.example")),
    ("email/raw", "stray_byte_name.eml", ("email", None, None, "joerg.mueller@example.de")),
    ("email/mailgun", "body_mime.txt", ("email", None, None, "sofia.ramirez@example.com")),
]


@pytest.mark.parametrize(("route", "name", "expected"), PEOPLE)
def test_a_persons_message_is_stored_with_the_identities_the_adapter_attests(
    client: TestClient,
    db: Database,
    tenant: TenantFixture,
    route: str,
    name: str,
    expected: tuple[str, str | None, str | None, str | None],
) -> None:
    """Each new kind of sender is a 200 and one stored message with its bsuid, phone or email."""
    request = signed(route, recorded(route, name), tenant_id=tenant.id, base_url=BASE)
    response = post(client, request)
    assert response.status_code == 200, response.text
    (message,) = stored(db, tenant.id)
    assert (message.channel, message.bsuid, message.phone, message.email) == expected
    assert message.identities()


IGNORED = [
    ("whatsapp", "edit.json", "edited message"),
    ("whatsapp", "revoke.json", "revoked message"),
    ("whatsapp", "smb_message_echoes.json", "message echo"),
    ("telegram", "business_owner_reply.json", "business owner message"),
    ("telegram", "business_bot_reply.json", "business owner message"),
    ("telegram", "edited_business_message.json", "edited message"),
    ("telegram", "deleted_business_messages.json", "deleted messages"),
    ("telegram", "business_connection.json", "business connection"),
    ("telegram", "pinned_message.json", "service message"),
    ("telegram", "new_chat_members.json", "service message"),
    ("email/raw", "null_from.eml", "null sender"),
    ("email/raw", "feedback_report.eml", "feedback report"),
    ("email/raw", "exchange_oof.eml", "auto-reply"),
    ("email/raw", "exim_bounce.eml", "delivery report"),
    ("email/raw", "yahoo_vacation.eml", "auto-reply"),
]


@pytest.mark.parametrize(("route", "name", "reason"), IGNORED)
def test_what_is_not_a_person_is_acknowledged_counted_and_not_stored(
    client: TestClient, db: Database, tenant: TenantFixture, route: str, name: str, reason: str
) -> None:
    """Edits, echoes, owners' replies, service messages and automated mail: 200, counted."""
    channel = CHANNEL_LABEL.get(route, "email")
    before = ignored_count(client, channel, reason)
    request = signed(route, recorded(route, name), tenant_id=tenant.id, base_url=BASE)
    response = post(client, request)
    assert response.status_code == 200, response.text
    assert stored(db, tenant.id) == []
    assert ignored_count(client, channel, reason) == before + 1


def test_mailgun_event_posted_to_the_route_is_a_200_and_counted(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """A Mailgun event webhook on the inbound route is verified, acknowledged and not stored."""
    event = json.loads((PAYLOADS / "email" / "mailgun" / "event_delivered.json").read_text())
    stamp, token = str(int(time.time())), uuid.uuid4().hex
    event["signature"] = {
        "timestamp": stamp,
        "token": token,
        "signature": mailgun.sign(SECRETS["mailgun_signing_key"], stamp, token),
    }
    before = ignored_count(client, "email", mailgun.MAILGUN_EVENT)
    request = SignedRequest(
        f"/webhooks/{tenant.id}/email/mailgun",
        {"content-type": "application/json"},
        json.dumps(event).encode(),
    )
    response = post(client, request)
    assert response.status_code == 200, response.text
    assert stored(db, tenant.id) == []
    assert ignored_count(client, "email", mailgun.MAILGUN_EVENT) == before + 1


def test_an_address_that_cannot_be_known_is_a_400_and_stores_nothing(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """A From address with a byte that is not UTF-8 is refused before the 2xx, not ingested."""
    payload = recorded("email/raw", "stray_byte_address.eml")
    response = post(client, signed("email/raw", payload, tenant_id=tenant.id, base_url=BASE))
    assert response.status_code == 400, response.text
    assert stored(db, tenant.id) == []


def test_rcs_and_sms_from_one_number_are_stored_with_one_phone(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """RCS and SMS from the same number reach the inbox on channel sms with the same phone."""
    rcs = recorded("twilio", "rcs_text.form")
    sms = {**rcs, "From": "+14155552671", "MessageSid": "SM" + uuid.uuid4().hex}
    for form in (rcs, sms):
        response = post(client, signed("twilio", form, tenant_id=tenant.id, base_url=BASE))
        assert response.status_code == 200, response.text
    messages = stored(db, tenant.id)
    assert {(m.channel, m.phone) for m in messages} == {("sms", "+14155552671")}
    assert sorted(m.transport or "sms" for m in messages) == ["rcs", "sms"]
