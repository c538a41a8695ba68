"""Webhooks while PostgreSQL refuses connections: answered 2xx from the spool with the tenant's
last-known secrets, reported by /healthz and /metrics, and moved into the inbox exactly once when
the database is back. The database sits behind a TCP proxy, so the shared server is untouched."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from api.app import create_app
from intake.settings import Settings
from intake.signing import DEMO_SECRETS
from models.db import Database
from models.schema import Message
from tests.factories import make_tenant
from tests.signed import BASE_URL, post_signed
from tests.support.proxy import FaultProxy, fault_proxy
from tests.support.traffic import twilio_sms
from tests.worker.test_end_to_end import wait_for


def proxied_url(url: str, proxy: FaultProxy) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)


@pytest.fixture
def pg_proxy(postgres_url: str) -> Iterator[FaultProxy]:
    target = make_url(postgres_url)
    with fault_proxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        yield proxy


@pytest.fixture
def proxied_app(
    postgres_url: str, pg_proxy: FaultProxy, tmp_path: Path
) -> Iterator[tuple[FastAPI, Database]]:
    """An app whose database is reached through the proxy, with an embedded broker and a spool
    of the test's own."""
    url = proxied_url(postgres_url, pg_proxy)
    db = Database(url)
    settings = Settings(
        database_url=url,
        broker_url=f"sqla+sqlite:///{tmp_path}/broker.db",
        spool_dir=str(tmp_path / "spool"),
    )
    app = create_app(settings, db=db)
    yield app, db
    app.state.spool.close()
    app.state.accept_batcher.close()
    db.dispose()


def stored(db: Database, tenant_id: uuid.UUID) -> list[str]:
    with db.sessions() as session:
        return sorted(
            session.scalars(
                select(Message.provider_message_id).where(Message.tenant_id == tenant_id)
            )
        )


def count(db: Database, tenant_id: uuid.UUID) -> int:
    with db.sessions() as session:
        return (
            session.scalar(
                select(func.count()).select_from(Message).where(Message.tenant_id == tenant_id)
            )
            or 0
        )


def sid(body: bytes) -> str:
    from urllib.parse import parse_qs

    return parse_qs(body.decode())["MessageSid"][0]


def test_refused_database_spools_then_drains_exactly_once(
    postgres_db: Database, pg_proxy: FaultProxy, proxied_app: tuple[FastAPI, Database]
) -> None:
    """With PostgreSQL refusing, a verified webhook of a tenant seen before is 200 from the
    spool; /healthz is 503 saying `spooling`, /metrics shows the depth; once the database is
    back, the spool empties into the inbox and each message is there once."""
    app, _ = proxied_app
    client = TestClient(app, raise_server_exceptions=False)
    tenant = make_tenant(postgres_db, **DEMO_SECRETS)
    first = twilio_sms(tenant.id, base_url=BASE_URL, number=1)
    assert post_signed(client, first) == 200  # the secrets are now known to this process

    pg_proxy.refuse()
    spooled = [twilio_sms(tenant.id, base_url=BASE_URL, number=n) for n in range(2, 7)]
    for request in spooled:
        started = time.monotonic()
        assert post_signed(client, request) == 200
        assert time.monotonic() - started < 5
    assert app.state.spool.stats().depth == 5
    health = client.get("/healthz")
    assert health.status_code == 503
    assert "spooling" in health.json()["detail"]
    metrics = client.get("/metrics").text
    assert "intake_spool_depth 5.0" in metrics
    assert "intake_database_up 0.0" in metrics
    registry = app.state.metrics.registry
    spooled_by_cause = {
        cause: registry.get_sample_value(
            "intake_messages_spooled_total", {"channel": "twilio", "cause": cause}
        )
        for cause in ("unavailable", "spooling")
    }
    assert spooled_by_cause == {"unavailable": 1.0, "spooling": 4.0}

    pg_proxy.pass_()
    wait_for(lambda: not app.state.spool.holding, timeout=30, what="the spool to drain")
    assert stored(postgres_db, tenant.id) == sorted(sid(r.body) for r in [first, *spooled])
    assert client.get("/healthz").json() == {"status": "ok"}
    assert "intake_spool_depth 0.0" in client.get("/metrics").text


def test_an_unknown_tenant_is_503_while_the_database_refuses(
    postgres_db: Database, pg_proxy: FaultProxy, proxied_app: tuple[FastAPI, Database]
) -> None:
    """A tenant this process never read cannot be verified with the database down: 503, and
    nothing spooled."""
    app, _ = proxied_app
    client = TestClient(app, raise_server_exceptions=False)
    tenant = make_tenant(postgres_db, **DEMO_SECRETS)
    pg_proxy.refuse()
    assert post_signed(client, twilio_sms(tenant.id, base_url=BASE_URL, number=1)) == 503
    assert app.state.spool.stats().depth == 0
    pg_proxy.pass_()
    assert count(postgres_db, tenant.id) == 0


def test_an_unwritable_spool_is_503(
    postgres_db: Database, pg_proxy: FaultProxy, postgres_url: str, tmp_path: Path
) -> None:
    """With the database refusing and the spool directory impossible to create, a verified
    webhook is 503, as the provider must then retry."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    url = proxied_url(postgres_url, pg_proxy)
    db = Database(url)
    settings = Settings(
        database_url=url,
        broker_url=f"sqla+sqlite:///{tmp_path}/broker.db",
        spool_dir=str(blocker / "spool"),
    )
    client = TestClient(create_app(settings, db=db), raise_server_exceptions=False)
    tenant = make_tenant(postgres_db, **DEMO_SECRETS)
    assert post_signed(client, twilio_sms(tenant.id, base_url=BASE_URL, number=1)) == 200
    pg_proxy.refuse()
    assert post_signed(client, twilio_sms(tenant.id, base_url=BASE_URL, number=2)) == 503
    pg_proxy.pass_()
    assert count(postgres_db, tenant.id) == 1
    db.dispose()
