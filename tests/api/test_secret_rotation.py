"""Channel secrets rotated with `--keep-previous`: both verify during the overlap, the metric says
which one did, and after it only the new one does. On SQLite and PostgreSQL.

Time is controlled by configuring the overlap with an earlier `now`, never by sleeping.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.webhook_secrets import parse_verified
from channels.base import InvalidSignatureError, RawRequest
from channels.registry import ADAPTERS
from intake.settings import Settings
from models.db import Database
from models.schema import utcnow
from models.tenants import ChannelSecrets, configure_tenant
from tests.api.webhook_payloads import ROUTES, SECRET_OF_ROUTE, SECRETS, fresh_message, signed
from tests.factories import TenantFixture, make_tenant

BASE = "http://testserver"
NEW_SECRETS = {name: value + "-rotated" for name, value in SECRETS.items()}
DAY = timedelta(hours=24)


@pytest.fixture
def app(db: Database, tmp_path: Path, request: pytest.FixtureRequest) -> FastAPI:
    if db.is_sqlite:
        settings = Settings(database_url=db.url, broker_url=f"sqla+sqlite:///{tmp_path}/q.db")
    else:
        redis_url: str = request.getfixturevalue("redis_url")
        settings = Settings(database_url=db.url, broker_url=redis_url, redis_url=redis_url)
    return create_app(settings, db=db)


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


def rotate(
    db: Database,
    tenant: TenantFixture,
    route: str,
    *,
    keep: timedelta | None,
    at: datetime | None = None,
) -> None:
    name = SECRET_OF_ROUTE[route]
    with db.unit_of_work() as session:
        configure_tenant(
            session,
            tenant_id=tenant.id,
            values={name: NEW_SECRETS[name]},
            keep_previous=keep,
            now=at,
        )


def post(client: TestClient, tenant: TenantFixture, route: str, secrets: dict[str, str]) -> int:
    payload, _ = fresh_message(route)
    request = signed(route, payload, tenant_id=tenant.id, base_url=BASE, secrets=secrets)
    return client.post(request.path, content=request.body, headers=request.headers).status_code


def secret_used(client: TestClient, channel: str) -> dict[str, float]:
    counts = {"current": 0.0, "previous": 0.0}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if (
                sample.name == "intake_webhook_secret_used_total"
                and sample.labels["channel"] == channel
            ):
                counts[sample.labels["secret"]] = sample.value
    return counts


@pytest.mark.parametrize("route", ROUTES)
def test_old_and_new_secret_both_verify_during_the_overlap(
    client: TestClient, db: Database, route: str
) -> None:
    """Within --keep-previous a request signed with either secret is accepted, and counted so."""
    tenant = make_tenant(db, **SECRETS)
    rotate(db, tenant, route, keep=DAY)
    assert post(client, tenant, route, SECRETS) == 200
    assert post(client, tenant, route, NEW_SECRETS) == 200
    assert post(client, tenant, route, NEW_SECRETS) == 200
    assert secret_used(client, route.split("/")[0]) == {"current": 2.0, "previous": 1.0}


@pytest.mark.parametrize("route", ROUTES)
def test_after_the_overlap_only_the_new_secret_verifies(
    client: TestClient, db: Database, route: str
) -> None:
    """An overlap that began 25 hours ago with 24 hours kept: the old secret is a 403."""
    tenant = make_tenant(db, **SECRETS)
    rotate(db, tenant, route, keep=DAY, at=utcnow() - DAY - timedelta(hours=1))
    assert post(client, tenant, route, SECRETS) == 403
    assert post(client, tenant, route, NEW_SECRETS) == 200
    assert secret_used(client, route.split("/")[0]) == {"current": 1.0, "previous": 0.0}


def test_a_replacement_without_overlap_refuses_the_old_secret_at_once(
    client: TestClient, db: Database
) -> None:
    """Without --keep-previous the replaced secret stops verifying immediately."""
    tenant = make_tenant(db, **SECRETS)
    rotate(db, tenant, "twilio", keep=None)
    assert post(client, tenant, "twilio", SECRETS) == 403
    assert post(client, tenant, "twilio", NEW_SECRETS) == 200


def test_another_tenants_previous_secret_verifies_nothing_here(
    client: TestClient, db: Database
) -> None:
    """An overlap belongs to its tenant: a request to tenant A signed with B's old secret is 403."""
    ours = make_tenant(db, **NEW_SECRETS)
    theirs = make_tenant(db, **SECRETS)
    rotate(db, theirs, "twilio", keep=DAY)
    assert post(client, theirs, "twilio", SECRETS) == 200
    assert post(client, ours, "twilio", SECRETS) == 403
    assert post(client, ours, "twilio", NEW_SECRETS) == 200


def test_the_whatsapp_verify_token_rotates_too(client: TestClient, db: Database) -> None:
    """Meta's subscription check answers with the old verify token during the overlap only."""
    tenant = make_tenant(db, **SECRETS)
    name = "whatsapp_verify_token"
    with db.unit_of_work() as session:
        configure_tenant(
            session, tenant_id=tenant.id, values={name: NEW_SECRETS[name]}, keep_previous=DAY
        )
    path = f"/webhooks/{tenant.id}/whatsapp"
    query = {"hub.mode": "subscribe", "hub.challenge": "42"}
    answers = [
        client.get(path, params={**query, "hub.verify_token": token})
        for token in (SECRETS[name], NEW_SECRETS[name], "guess")
    ]
    assert [(r.status_code, r.text if r.status_code == 200 else "") for r in answers] == [
        (200, "42"),
        (200, "42"),
        (403, ""),
    ]


def test_parse_verified_follows_the_clock_it_is_given() -> None:
    """The previous secret verifies up to its end and not from that instant on; current first."""
    [telegram] = [a for a in ADAPTERS if a.route == "telegram"]
    payload, _ = fresh_message("telegram")
    old = signed("telegram", payload, tenant_id=uuid.uuid4(), base_url=BASE, secrets=SECRETS)
    raw = RawRequest(method="POST", url=BASE + old.path, headers=old.headers, body=old.body)
    ends = datetime(2026, 12, 1, 12, tzinfo=UTC)
    secrets = ChannelSecrets(
        current={"telegram_secret_token": NEW_SECRETS["telegram_secret_token"]},
        previous={"telegram_secret_token": (SECRETS["telegram_secret_token"], ends)},
    )
    _, used = parse_verified(telegram, raw, secrets, ends - timedelta(microseconds=1))
    assert used == "previous"
    with pytest.raises(InvalidSignatureError):
        parse_verified(telegram, raw, secrets, ends)
    both_new = ChannelSecrets(current={"telegram_secret_token": SECRETS["telegram_secret_token"]})
    assert parse_verified(telegram, raw, both_new, ends)[1] == "current"
