"""The webhook routes on SQLite (embedded broker) and PostgreSQL (Redis broker and flags).

Requests are signed as each provider signs them (intake.signing); the database and the queue
are real. Every refusal is checked three ways: its status, its count in /metrics, its log line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import sqlite3
import string
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from api.app import create_app
from channels import email_raw, mailgun
from intake.settings import Settings
from intake.signing import SignedRequest
from models.db import Database
from models.schema import Message
from tests.api.webhook_payloads import (
    ROUTES,
    SECRET_OF_ROUTE,
    SECRETS,
    fresh_message,
    mailgun_form,
    not_from_a_person,
    signed,
    twilio_sms,
)
from tests.factories import TenantFixture, make_tenant

BASE = "http://testserver"
MIB = 1024 * 1024
LIMIT = {route: 25 * MIB if route.startswith("email/") else MIB for route in ROUTES}
CHANNEL_LABEL = {route: route.split("/")[0] for route in ROUTES}  # the metrics' `channel`
WRONG_SECRETS = {name: value + "-wrong" for name, value in SECRETS.items()}
# (route, a WhatsApp sender through Twilio?): every kind of message a route takes.
MESSAGE_CASES = [
    pytest.param("twilio", False, id="twilio-sms"),
    pytest.param("twilio", True, id="twilio-whatsapp"),
    *(pytest.param(route, False, id=route) for route in ROUTES if route != "twilio"),
]


@pytest.fixture
def settings(db: Database, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """PostgreSQL with production's Redis broker and flags; SQLite with the embedded broker."""
    spool = str(tmp_path / "spool")
    if db.is_sqlite:
        return Settings(
            database_url=db.url, broker_url=f"sqla+sqlite:///{tmp_path}/broker.db", spool_dir=spool
        )
    redis_url: str = request.getfixturevalue("redis_url")
    return Settings(database_url=db.url, broker_url=redis_url, redis_url=redis_url, spool_dir=spool)


@pytest.fixture
def app(db: Database, settings: Settings) -> FastAPI:
    return create_app(settings, db=db)


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    # A 500 must show up as a status to assert on, not as an exception in the test.
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def tenant(db: Database) -> TenantFixture:
    return make_tenant(db, **SECRETS)


def post(client: TestClient, request: SignedRequest, **headers: str) -> httpx.Response:
    response: httpx.Response = client.post(
        request.path, content=request.body, headers={**request.headers, **headers}
    )
    return response


def stored(db: Database, tenant_id: uuid.UUID) -> list[Message]:
    with db.sessions() as session:
        return list(session.scalars(select(Message).where(Message.tenant_id == tenant_id)))


def wakeups(settings: Settings, tenant_id: uuid.UUID) -> int:
    """Drain tasks for this tenant sitting in the broker (Redis list or embedded SQLite)."""
    if settings.broker_is_embedded:
        raise AssertionError("tests give the embedded broker a file of their own")
    marker = str(tenant_id)
    if settings.broker_url.startswith("redis"):
        queued = redis.Redis.from_url(settings.broker_url, decode_responses=True).lrange(
            "intake", 0, -1
        )
        return sum(marker in item for item in queued)
    path = settings.broker_url.removeprefix("sqla+sqlite:///")
    with sqlite3.connect(path) as broker:
        try:
            rows = broker.execute("SELECT payload FROM kombu_message").fetchall()
        except sqlite3.OperationalError:  # no task sent yet: kombu makes its tables lazily
            return 0
    return sum(marker in str(row[0]) for row in rows)


def rejected(client: TestClient, channel: str, reason: str) -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "intake_webhooks_rejected_total" and sample.labels == {
                "channel": channel,
                "reason": reason,
            }:
                return sample.value
    return 0.0


def assert_refused(
    client: TestClient,
    caplog: pytest.LogCaptureFixture,
    send: Callable[[], httpx.Response],
    *,
    status: int,
    channel: str,
    reason: str,
) -> httpx.Response:
    """`send` is refused with `status`, counted under (channel, reason) and logged with it."""
    before = rejected(client, channel, reason)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="intake.webhooks"):
        response = send()
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status
    assert rejected(client, channel, reason) == before + 1
    logged = [r for r in caplog.records if r.getMessage() == "webhook.rejected"]
    assert [(getattr(r, "reason", None), getattr(r, "status", None)) for r in logged] == [
        (reason, status)
    ]
    return response


def sign_bytes(route: str, body: bytes, tenant_id: uuid.UUID) -> SignedRequest:
    """Arbitrary bytes signed for a route whose signature covers the raw body (or none of it)."""
    path = f"/webhooks/{tenant_id}/{route}"
    if route == "whatsapp":
        digest = hmac.new(SECRETS["whatsapp_app_secret"].encode(), body, hashlib.sha256)
        return SignedRequest(
            path,
            {
                "content-type": "application/json",
                "x-hub-signature-256": "sha256=" + digest.hexdigest(),
            },
            body,
        )
    if route == "telegram":
        return SignedRequest(
            path,
            {
                "content-type": "application/json",
                "x-telegram-bot-api-secret-token": SECRETS["telegram_secret_token"],
            },
            body,
        )
    if route == "email/raw":
        return SignedRequest(
            path,
            {
                "content-type": "message/rfc822",
                "x-intake-signature": email_raw.sign(body, SECRETS["email_webhook_secret"]),
            },
            body,
        )
    raise ValueError(f"{route} signs form fields, not bytes")


def mailgun_signed(
    form: dict[str, str],
    tenant_id: uuid.UUID,
    *,
    timestamp: int | None = None,
    token: str | None = None,
) -> SignedRequest:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    token = token or uuid.uuid4().hex
    fields = {
        **form,
        "timestamp": stamp,
        "token": token,
        "signature": mailgun.sign(SECRETS["mailgun_signing_key"], stamp, token),
    }
    return SignedRequest(
        f"/webhooks/{tenant_id}/email/mailgun",
        {"content-type": "application/x-www-form-urlencoded"},
        urlencode(fields).encode(),
    )


# --- accepted ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("route", "via_whatsapp"), MESSAGE_CASES)
def test_signed_message_is_stored_once_and_a_redelivery_changes_nothing(
    client: TestClient,
    db: Database,
    settings: Settings,
    tenant: TenantFixture,
    route: str,
    via_whatsapp: bool,
) -> None:
    """A signed message is 200 and one pending row with one wake-up; its redelivery adds none."""
    payload, expected = fresh_message(route, twilio_whatsapp_sender=via_whatsapp)
    first = post(client, signed(route, payload, tenant_id=tenant.id, base_url=BASE))
    assert first.status_code == 200, first.text
    [row] = stored(db, tenant.id)
    assert (row.state, row.channel, row.contact_id) == ("pending", expected.source, None)
    assert row.payload["phone"] == expected.phone
    assert row.payload["email"] == expected.email
    assert client.app.state.accept_batcher.waker.wait_idle(10)  # wake-ups go after the answer
    assert wakeups(settings, tenant.id) == 1

    # Redelivered: signed afresh (Mailgun mints a new token for every attempt).
    again = post(client, signed(route, payload, tenant_id=tenant.id, base_url=BASE))
    assert again.status_code == 200, again.text
    assert [r.id for r in stored(db, tenant.id)] == [row.id]
    assert client.app.state.accept_batcher.waker.wait_idle(10)  # wake-ups go after the answer
    assert wakeups(settings, tenant.id) == 1


def test_shutdown_stops_the_accept_batcher(
    app: FastAPI, db: Database, tenant: TenantFixture
) -> None:
    """Accepts run on the app's batching thread, which the app's shutdown stops."""
    with TestClient(app) as served:
        payload, _ = fresh_message("telegram")
        response = post(served, signed("telegram", payload, tenant_id=tenant.id, base_url=BASE))
        assert response.status_code == 200, response.text
        assert app.state.accept_batcher.batches == 1
    assert not app.state.accept_batcher.running
    assert len(stored(db, tenant.id)) == 1


@pytest.mark.parametrize("route", ROUTES)
def test_answer_is_what_the_provider_expects(
    client: TestClient, tenant: TenantFixture, route: str
) -> None:
    """Twilio gets an empty TwiML <Response/> as text/xml; the others a tiny JSON body."""
    payload, _ = fresh_message(route)
    response = post(client, signed(route, payload, tenant_id=tenant.id, base_url=BASE))
    assert response.status_code == 200
    if route == "twilio":
        assert response.headers["content-type"] == "text/xml"
        assert response.text == "<Response/>"
    else:
        assert response.headers["content-type"] == "application/json"
        assert len(response.content) < 64


@pytest.mark.parametrize("route", ROUTES)
def test_request_not_from_a_person_is_acknowledged_and_stores_nothing(
    client: TestClient, db: Database, tenant: TenantFixture, route: str
) -> None:
    """A status callback, receipt, channel post or auto-reply is 200 and stores no message."""
    payload = not_from_a_person(route)
    response = post(client, signed(route, payload, tenant_id=tenant.id, base_url=BASE))
    assert response.status_code == 200, response.text
    assert stored(db, tenant.id) == []
    ignored = client.get("/metrics").text
    assert f'intake_webhooks_ignored_total{{channel="{CHANNEL_LABEL[route]}"' in ignored


def test_one_whatsapp_post_may_carry_several_messages(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """Every message of a batched Meta notification is stored, each once."""
    first, _ = fresh_message("whatsapp")
    second, _ = fresh_message("whatsapp")
    value = first["entry"][0]["changes"][0]["value"]
    value["messages"] += second["entry"][0]["changes"][0]["value"]["messages"]
    value["contacts"] += second["entry"][0]["changes"][0]["value"]["contacts"]
    response = post(client, signed("whatsapp", first, tenant_id=tenant.id, base_url=BASE))
    assert response.status_code == 200
    assert len(stored(db, tenant.id)) == 2


# --- refused: signatures and tenants ------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_wrong_signature_is_403_and_stores_nothing(
    client: TestClient,
    db: Database,
    tenant: TenantFixture,
    caplog: pytest.LogCaptureFixture,
    route: str,
) -> None:
    """Signed with another secret: 403, counted and logged as `signature`, nothing stored."""
    payload, _ = fresh_message(route)
    request = signed(route, payload, tenant_id=tenant.id, base_url=BASE, secrets=WRONG_SECRETS)
    assert_refused(
        client,
        caplog,
        lambda: post(client, request),
        status=403,
        channel=CHANNEL_LABEL[route],
        reason="signature",
    )
    assert stored(db, tenant.id) == []


def _without_signature(route: str, request: SignedRequest) -> SignedRequest:
    if route == "email/mailgun":
        fields = dict(parse_qsl(request.body.decode(), keep_blank_values=True))
        del fields["signature"]
        return SignedRequest(request.path, request.headers, urlencode(fields).encode())
    headers = {k: v for k, v in request.headers.items() if k == "content-type"}
    return SignedRequest(request.path, headers, request.body)


@pytest.mark.parametrize("route", ROUTES)
def test_missing_signature_is_403_and_stores_nothing(
    client: TestClient,
    db: Database,
    tenant: TenantFixture,
    caplog: pytest.LogCaptureFixture,
    route: str,
) -> None:
    """No signature at all: 403, counted and logged as `signature`, nothing stored."""
    payload, _ = fresh_message(route)
    request = _without_signature(route, signed(route, payload, tenant_id=tenant.id, base_url=BASE))
    assert_refused(
        client,
        caplog,
        lambda: post(client, request),
        status=403,
        channel=CHANNEL_LABEL[route],
        reason="signature",
    )
    assert stored(db, tenant.id) == []


@pytest.mark.parametrize("route", ROUTES)
def test_tenant_without_the_channel_secret_is_403(
    client: TestClient, db: Database, caplog: pytest.LogCaptureFixture, route: str
) -> None:
    """A tenant that never configured this channel refuses it (403 `not_configured`)."""
    others = {k: v for k, v in SECRETS.items() if k != SECRET_OF_ROUTE[route]}
    tenant = make_tenant(db, **others)
    payload, _ = fresh_message(route)
    request = signed(route, payload, tenant_id=tenant.id, base_url=BASE)
    assert_refused(
        client,
        caplog,
        lambda: post(client, request),
        status=403,
        channel=CHANNEL_LABEL[route],
        reason="not_configured",
    )
    assert stored(db, tenant.id) == []


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("tenant_id", ["unknown", "malformed"])
def test_unknown_or_malformed_tenant_is_404(
    client: TestClient, caplog: pytest.LogCaptureFixture, route: str, tenant_id: str
) -> None:
    """A tenant id that names no tenant, or is no UUID at all: 404 `unknown_tenant`."""
    target = str(uuid.uuid4()) if tenant_id == "unknown" else "not-a-tenant"
    payload, _ = fresh_message(route)
    request = signed(route, payload, tenant_id=target, base_url=BASE)
    assert_refused(
        client,
        caplog,
        lambda: post(client, request),
        status=404,
        channel=CHANNEL_LABEL[route],
        reason="unknown_tenant",
    )


def _signed_garbage(route: str, tenant_id: uuid.UUID) -> SignedRequest:
    if route == "twilio":
        return signed(
            route, {"Body": "hello", "From": "+14155550100"}, tenant_id=tenant_id, base_url=BASE
        )
    if route == "email/mailgun":
        return mailgun_signed({"subject": "no sender at all"}, tenant_id)
    return sign_bytes(route, b"\xff\xfe{not json, not mail\x00", tenant_id)


@pytest.mark.parametrize("route", ROUTES)
def test_signed_garbage_is_400_and_stores_nothing(
    client: TestClient,
    db: Database,
    tenant: TenantFixture,
    caplog: pytest.LogCaptureFixture,
    route: str,
) -> None:
    """A correctly signed body that is no provider message: 400 `malformed`."""
    request = _signed_garbage(route, tenant.id)
    assert_refused(
        client,
        caplog,
        lambda: post(client, request),
        status=400,
        channel=CHANNEL_LABEL[route],
        reason="malformed",
    )
    assert stored(db, tenant.id) == []


# --- refused: size --------------------------------------------------------------------------


def _chunks(total: int, size: int = MIB) -> Iterator[bytes]:
    while total > 0:
        yield b"x" * min(size, total)
        total -= size


@pytest.mark.parametrize("route", ROUTES)
def test_body_over_the_limit_is_413_however_it_is_sent(
    client: TestClient,
    db: Database,
    tenant: TenantFixture,
    caplog: pytest.LogCaptureFixture,
    route: str,
) -> None:
    """Over 1 MiB (email 25 MiB) is 413 whether declared, chunked or understated; at it, not."""
    limit, path = LIMIT[route], f"/webhooks/{tenant.id}/{route}"
    channel = CHANNEL_LABEL[route]
    declared = assert_refused(
        client,
        caplog,
        lambda: client.post(path, content=b"x" * (limit + 1)),
        status=413,
        channel=channel,
        reason="too_large",
    )
    assert "bytes" in declared.json()["detail"]
    # A generator body goes out chunked, with no Content-Length to check up front.
    chunked = assert_refused(
        client,
        caplog,
        lambda: client.post(path, content=_chunks(limit + 1)),
        status=413,
        channel=channel,
        reason="too_large",
    )
    assert chunked.json()["detail"] == declared.json()["detail"]
    assert_refused(
        client,
        caplog,
        lambda: client.post(path, content=_chunks(limit + 1), headers={"content-length": "10"}),
        status=413,
        channel=channel,
        reason="too_large",
    )
    at_limit = client.post(path, content=_chunks(limit))
    assert at_limit.status_code in {400, 403}
    assert stored(db, tenant.id) == []


# --- WhatsApp subscription, Mailgun replays -------------------------------------------------


def test_whatsapp_subscription_challenge_is_echoed_as_plain_text(
    client: TestClient, db: Database, tenant: TenantFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """Meta's GET with the right verify token gets the challenge back; a wrong one 403."""
    path = f"/webhooks/{tenant.id}/whatsapp"
    query = {
        "hub.mode": "subscribe",
        "hub.verify_token": SECRETS["whatsapp_verify_token"],
        "hub.challenge": "1158201444",
    }
    response = client.get(path, params=query)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "1158201444"
    wrong = {**query, "hub.verify_token": "guess"}
    assert_refused(
        client,
        caplog,
        lambda: client.get(path, params=wrong),
        status=403,
        channel="whatsapp",
        reason="signature",
    )
    assert stored(db, tenant.id) == []


def test_mailgun_token_is_single_use(
    client: TestClient, db: Database, tenant: TenantFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """A replayed Mailgun request is 403 `replay`, even with another message under its token."""
    payload, _ = fresh_message("email/mailgun")
    request = mailgun_signed(payload, tenant.id, token="tok" + uuid.uuid4().hex)
    assert post(client, request).status_code == 200
    [row] = stored(db, tenant.id)
    assert_refused(
        client, caplog, lambda: post(client, request), status=403, channel="email", reason="replay"
    )
    # The signature covers only timestamp+token, so a thief could pair it with a new message.
    fields = dict(parse_qsl(request.body.decode()))
    forged_form = {
        **mailgun_form(address="mallory@example.com", name="Mallory"),
        **{k: fields[k] for k in ("timestamp", "token", "signature")},
    }
    forged = SignedRequest(request.path, request.headers, urlencode(forged_form).encode())
    assert_refused(
        client, caplog, lambda: post(client, forged), status=403, channel="email", reason="replay"
    )
    assert [r.id for r in stored(db, tenant.id)] == [row.id]


def test_mailgun_stale_timestamp_is_403(
    client: TestClient, db: Database, tenant: TenantFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """A correctly signed Mailgun request minted 16 minutes ago is refused as a replay."""
    payload, _ = fresh_message("email/mailgun")
    request = mailgun_signed(payload, tenant.id, timestamp=int(time.time()) - 16 * 60)
    assert_refused(
        client, caplog, lambda: post(client, request), status=403, channel="email", reason="replay"
    )
    assert stored(db, tenant.id) == []
    fresh = mailgun_signed(payload, tenant.id, timestamp=int(time.time()) - 14 * 60)
    assert post(client, fresh).status_code == 200


# --- Twilio's signed URL -----------------------------------------------------------------------


def _twilio_app(db: Database, settings: Settings, **changes: Any) -> TestClient:
    changed = Settings(**{**settings.model_dump(), **changes})  # validated, as from the env
    return TestClient(create_app(changed, db=db), raise_server_exceptions=False)


def test_twilio_signature_is_checked_against_the_public_url(
    db: Database, settings: Settings, tenant: TenantFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """With INTAKE_PUBLIC_URL set, Twilio's signature of that URL passes; of the local one, not."""
    client = _twilio_app(db, settings, public_url="https://intake.example.com/")
    payload = twilio_sms(phone="+14155550199")
    public = signed("twilio", payload, tenant_id=tenant.id, base_url="https://intake.example.com")
    local = signed("twilio", payload, tenant_id=tenant.id, base_url=BASE)
    assert_refused(
        client,
        caplog,
        lambda: post(client, local),
        status=403,
        channel="twilio",
        reason="signature",
    )
    assert post(client, public).status_code == 200
    assert len(stored(db, tenant.id)) == 1


@pytest.mark.parametrize("trust_proxy", [True, False])
def test_twilio_forwarded_url_counts_only_behind_a_trusted_proxy(
    db: Database,
    settings: Settings,
    tenant: TenantFixture,
    caplog: pytest.LogCaptureFixture,
    trust_proxy: bool,
) -> None:
    """X-Forwarded-Proto/Host form the signed URL with INTAKE_TRUST_PROXY=1, and not with 0."""
    # Untrusted, the headers would let anyone choose the URL a signature is checked against.
    client = _twilio_app(db, settings, trust_proxy=trust_proxy)
    request = signed(
        "twilio",
        twilio_sms(phone="+14155550198"),
        tenant_id=tenant.id,
        base_url="https://hooks.example.org",
    )
    forwarded = {
        "x-forwarded-proto": "https, http",
        "x-forwarded-host": "hooks.example.org, proxy.internal",
    }
    if trust_proxy:
        assert post(client, request, **forwarded).status_code == 200
        assert len(stored(db, tenant.id)) == 1
    else:
        assert_refused(
            client,
            caplog,
            lambda: post(client, request, **forwarded),
            status=403,
            channel="twilio",
            reason="signature",
        )
        assert stored(db, tenant.id) == []


# --- the database cannot be written -------------------------------------------------------------


def _read_only(db: Database) -> Database:
    """The same database, readable but not writable (as after a failover to a replica)."""
    if db.is_sqlite:
        return Database(f"sqlite:///file:{db.url.removeprefix('sqlite:///')}?mode=ro&uri=true")
    return Database(db.url, connect_args={"options": "-c default_transaction_read_only=on"})


@pytest.mark.parametrize("route", ROUTES)
def test_unwritable_database_is_503_and_the_retry_is_accepted(
    db: Database,
    settings: Settings,
    tenant: TenantFixture,
    caplog: pytest.LogCaptureFixture,
    route: str,
) -> None:
    """With no spool to fall back on, an uncommittable message is 503 `unavailable`, nothing
    kept; the same retry then works."""
    read_only = _read_only(db)
    no_spool = settings.model_copy(update={"spool_dir": ""})
    try:
        client = TestClient(create_app(no_spool, db=read_only), raise_server_exceptions=False)
        payload, _ = fresh_message(route)
        request = signed(route, payload, tenant_id=tenant.id, base_url=BASE)
        refused = assert_refused(
            client,
            caplog,
            lambda: post(client, request),
            status=503,
            channel=CHANNEL_LABEL[route],
            reason="unavailable",
        )
        assert "unavailable" in refused.json()["detail"]
        assert stored(db, tenant.id) == []
    finally:
        read_only.dispose()
    # The same bytes again (a Mailgun token included: the 503 did not burn it).
    writable = TestClient(create_app(settings, db=db))
    assert post(writable, request).status_code == 200
    assert len(stored(db, tenant.id)) == 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: nothing listens there


def test_unreachable_database_is_503_on_every_route(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With PostgreSQL unreachable and no secrets ever read, no route can verify a request:
    each answers 503 `unavailable`, counted and logged."""
    down = Database(
        f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/intake",
        connect_args={"connect_timeout": 2},
    )
    settings = Settings(database_url=down.url, broker_url=f"sqla+sqlite:///{tmp_path}/b.db")
    app = create_app(settings, db=down)
    client = TestClient(app, raise_server_exceptions=False)
    registry = app.state.metrics.registry
    tenant_id = uuid.uuid4()
    for route in ROUTES:
        payload, _ = fresh_message(route)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="intake.webhooks"):
            response = post(client, signed(route, payload, tenant_id=tenant_id, base_url=BASE))
        assert response.status_code == 503, (route, response.text)
        assert registry.get_sample_value(
            "intake_webhooks_rejected_total",
            {"channel": CHANNEL_LABEL[route], "reason": "unavailable"},
        ) == (2.0 if route == "email/raw" else 1.0)  # mailgun and raw share `email`
        assert [
            getattr(r, "reason", None)
            for r in caplog.records
            if r.getMessage() == "webhook.rejected"
        ] == ["unavailable"]
    down.dispose()


# --- never a 500 ---------------------------------------------------------------------------

HEADER_NAMES = [
    "content-type",
    "x-twilio-signature",
    "x-hub-signature-256",
    "x-telegram-bot-api-secret-token",
    "x-intake-signature",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
    "i-twilio-idempotency-token",
]
header_values = st.text(alphabet=string.printable.strip() + " ", max_size=80)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/x-www-form-urlencoded",
        "message/rfc822",
        "multipart/form-data; boundary=xyz",
        "multipart/form-data",
        "text/plain; charset=utf-9",
    ]
)
ALLOWED = {200, 400, 403, 404, 413}
FUZZ = hypothesis_settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("route", ROUTES)
@FUZZ
@given(
    body=st.binary(max_size=2048),
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=5),
    content_type=CONTENT_TYPES,
    which=st.sampled_from(["tenant", "unknown", "garbage"]),
    query=st.dictionaries(
        st.sampled_from(["hub.mode", "hub.verify_token", "hub.challenge", "x"]),
        header_values,
        max_size=3,
    ),
)
def test_arbitrary_requests_never_get_a_500(
    client: TestClient,
    tenant: TenantFixture,
    route: str,
    body: bytes,
    headers: dict[str, str],
    content_type: str,
    which: str,
    query: dict[str, str],
) -> None:
    """Any bytes and headers, to any tenant id: always one of 200, 400, 403, 404, 413."""
    tenant_id = {"tenant": str(tenant.id), "unknown": str(uuid.uuid4()), "garbage": "%20x"}[which]
    path = f"/webhooks/{tenant_id}/{route}"
    response = client.post(
        path, content=body, params=query, headers={"content-type": content_type, **headers}
    )
    assert response.status_code in ALLOWED, response.text
    if route == "whatsapp":
        assert client.get(path, params=query, headers=headers).status_code in ALLOWED


form_fields = st.dictionaries(
    st.sampled_from(
        [
            "MessageSid",
            "From",
            "Body",
            "NumMedia",
            "MediaUrl0",
            "MessageStatus",
            "SmsStatus",
            "WaId",
            "ProfileName",
            "Latitude",
            "Longitude",
            "from",
            "sender",
            "subject",
            "Message-Id",
            "message-headers",
            "attachments",
            "body-plain",
            "stripped-text",
            "Content-Type",
            "Auto-Submitted",
        ]
    ),
    st.text(max_size=60),
    max_size=8,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "object",
                    "entry",
                    "changes",
                    "value",
                    "messages",
                    "contacts",
                    "from",
                    "id",
                    "type",
                    "text",
                    "body",
                    "message",
                    "chat",
                    "date",
                    "message_id",
                    "update_id",
                    "is_bot",
                    "first_name",
                    "timestamp",
                    "field",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


def _replace_one(payload: Any, data: st.DataObject) -> None:
    """Walk down a random path of `payload` and put an arbitrary JSON value there."""
    node = payload
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return
        key = data.draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, dict | list) and child and data.draw(st.booleans()):
            node = child
            continue
        node[key] = data.draw(json_values)
        return


@pytest.mark.parametrize("route", ROUTES)
@FUZZ
@given(data=st.data())
def test_correctly_signed_nonsense_never_gets_a_500(
    client: TestClient, tenant: TenantFixture, route: str, data: st.DataObject
) -> None:
    """Signed forms, JSON and bytes of any shape reach the parsers: 200, 400 or 403, no 500."""
    if route in {"twilio", "email/mailgun"}:
        form = data.draw(form_fields)
        request = (
            signed(route, form, tenant_id=tenant.id, base_url=BASE)
            if route == "twilio"
            else mailgun_signed(form, tenant.id)
        )
    elif route == "email/raw":
        body = data.draw(
            st.one_of(
                st.binary(max_size=2048),
                st.text(max_size=200).map(
                    lambda t: f"From: {t}\r\nMessage-ID: <{t}>\r\nSubject: {t}\r\n\r\n{t}".encode(
                        "utf-8", "surrogatepass"
                    )
                ),
            )
        )
        request = sign_bytes(route, body, tenant.id)
    else:
        payload = fresh_message(route)[0]
        if data.draw(st.booleans()):
            payload = data.draw(json_values)
        else:  # a realistic payload with one value anywhere in it replaced
            _replace_one(payload, data)
        request = sign_bytes(route, json.dumps(payload).encode(), tenant.id)
    response = post(client, request)
    assert response.status_code in {200, 400, 403}, response.text
