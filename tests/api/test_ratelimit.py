"""Per-tenant rate limits: 429 problem with Retry-After on the Contacts API (never on webhooks),
in-process and on real Redis, one tenant never spending another's allowance, Redis failing open.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from api.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from intake.settings import Settings
from intake.signing import DEMO_SECRETS
from models.db import Database
from models.schema import Message
from tests.api.test_health import closed_port
from tests.factories import TenantFixture, make_tenant
from tests.signed import SAMPLES, post_sample

CONTACTS = "/api/v1/contacts"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "redis"])
def limiter_url(request: pytest.FixtureRequest) -> str:
    """'' for the in-process limiter, a real Redis URL for the shared one."""
    if request.param == "local":
        return ""
    url: str = request.getfixturevalue("redis_url")
    return url


def make_app(db: Database, tmp_path: Path, redis_url: str = "", **limits: int) -> FastAPI:
    settings = Settings(
        database_url=db.url,
        broker_url=f"sqla+sqlite:///{tmp_path}/broker.db",
        redis_url=redis_url,
        **limits,
    )  # type: ignore[arg-type]
    return create_app(settings, db=db)


def assert_rate_limited(response: Any) -> int:
    """A 429 problem+json with a whole-seconds Retry-After within the minute; that value."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 429
    assert body["type"].endswith("rate-limited")
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 60
    return int(retry_after)


# The limiters themselves


def test_local_limiter_refuses_past_the_limit_until_the_window_ends() -> None:
    """In-process: `limit` hits pass, the next is refused with the seconds left, a new window
    passes again."""
    clock = FakeClock()
    limiter = LocalRateLimiter(window_seconds=60, clock=clock)
    assert [limiter.hit("api:a", limit=3).allowed for _ in range(4)] == [True, True, True, False]
    clock.now += 20.5
    refused = limiter.hit("api:a", limit=3)
    assert (refused.allowed, refused.retry_after_seconds) == (False, 40)
    assert limiter.hit("api:b", limit=3).allowed  # another key has its own allowance
    clock.now += 40
    assert limiter.hit("api:a", limit=3).allowed


def test_redis_limiter_counts_atomically_across_limiters(redis_client: redis.Redis) -> None:
    """Two limiters (two app processes) on one Redis share a count that many threads at once
    cannot overshoot."""
    limiters = [RedisRateLimiter(redis_client), RedisRateLimiter(redis_client)]
    key = f"api:{uuid.uuid4()}"
    allowed: list[bool] = []
    guard = threading.Lock()

    def run(limiter: RateLimiter) -> None:
        for _ in range(25):
            decision = limiter.hit(key, limit=60)
            with guard:
                allowed.append(decision.allowed)

    threads = [threading.Thread(target=run, args=(limiters[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert (len(allowed), allowed.count(True)) == (200, 60)
    assert 0 < redis_client.pttl(RedisRateLimiter.prefix + key) <= 60_000


def test_redis_limiter_window_ends(redis_client: redis.Redis) -> None:
    """On Redis, a refused key is allowed again once its window has expired."""
    limiter = RedisRateLimiter(redis_client, window_seconds=0.3)
    key = f"webhooks:{uuid.uuid4()}"
    assert limiter.hit(key, limit=1).allowed
    refused = limiter.hit(key, limit=1)
    assert (refused.allowed, refused.retry_after_seconds) == (False, 1)
    # Polling the condition with a deadline: the key's expiry is Redis's clock, not ours.
    deadline = time.monotonic() + 5
    while redis_client.exists(RedisRateLimiter.prefix + key):
        assert time.monotonic() < deadline, "the window never expired"
        time.sleep(0.02)
    assert limiter.hit(key, limit=1).allowed


def test_redis_outage_fails_open_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """With Redis unreachable every hit is allowed, and the outage is logged once, not per hit."""
    client = redis.Redis(port=closed_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    limiter = RedisRateLimiter(client)
    with caplog.at_level(logging.WARNING, logger="intake.ratelimit"):
        decisions = [limiter.hit("api:x", limit=1).allowed for _ in range(5)]
    assert decisions == [True] * 5
    assert [r.getMessage().split()[0] for r in caplog.records] == ["ratelimit.unavailable"]


# The Contacts API


def test_api_over_its_limit_is_429_and_other_tenants_are_untouched(
    db: Database, tmp_path: Path, limiter_url: str
) -> None:
    """A tenant's fourth request in the minute with a limit of 3 is a 429 with Retry-After;
    another tenant's requests still pass."""
    client = TestClient(make_app(db, tmp_path, limiter_url, rate_limit_api_per_minute=3))
    busy, quiet = make_tenant(db), make_tenant(db)
    assert [client.get(CONTACTS, headers=busy.auth).status_code for _ in range(3)] == [200] * 3
    assert_rate_limited(client.get(CONTACTS, headers=busy.auth))
    assert_rate_limited(
        client.post(CONTACTS, headers=busy.auth, json={"name": "Jo", "email": "jo@example.com"})
    )
    assert [client.get(CONTACTS, headers=quiet.auth).status_code for _ in range(3)] == [200] * 3


def test_api_limit_zero_is_off(db: Database, tmp_path: Path) -> None:
    """INTAKE_RATE_LIMIT_API_PER_MINUTE=0 lets any number of requests through."""
    client = TestClient(make_app(db, tmp_path, rate_limit_api_per_minute=0))
    tenant = make_tenant(db)
    assert {client.get(CONTACTS, headers=tenant.auth).status_code for _ in range(30)} == {200}


def test_api_limit_is_the_default_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API limit is read from INTAKE_RATE_LIMIT_API_PER_MINUTE and defaults to 600."""
    monkeypatch.delenv("INTAKE_RATE_LIMIT_API_PER_MINUTE", raising=False)
    assert Settings(_env_file=None).rate_limit_api_per_minute == 600
    monkeypatch.setenv("INTAKE_RATE_LIMIT_API_PER_MINUTE", "7")
    assert Settings(_env_file=None).rate_limit_api_per_minute == 7


def test_api_stays_up_when_redis_is_down(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A limiter whose Redis does not answer lets the API serve, and says so in a warning."""
    app = make_app(
        db, tmp_path, f"redis://127.0.0.1:{closed_port()}/0", rate_limit_api_per_minute=1
    )
    tenant = make_tenant(db)
    with caplog.at_level(logging.WARNING, logger="intake.ratelimit"):
        statuses = [
            TestClient(app).get(CONTACTS, headers=tenant.auth).status_code for _ in range(3)
        ]
    assert statuses == [200, 200, 200]
    assert any(r.getMessage().startswith("ratelimit.unavailable") for r in caplog.records)


# Webhooks


def stored(db: Database, tenant: TenantFixture) -> int:
    with db.sessions() as session:
        return (
            session.scalar(
                select(func.count()).select_from(Message).where(Message.tenant_id == tenant.id)
            )
            or 0
        )


def test_verified_webhooks_are_never_refused_for_load(
    db: Database, tmp_path: Path, limiter_url: str
) -> None:
    """A tenant whose API limit is spent still has every verified webhook accepted and stored:
    providers such as Twilio do not resend, so webhooks are never answered 429."""
    app = make_app(db, tmp_path, limiter_url, rate_limit_api_per_minute=1)
    client = TestClient(app)
    busy = make_tenant(db, **DEMO_SECRETS)
    assert client.get(CONTACTS, headers=busy.auth).status_code == 200
    assert_rate_limited(client.get(CONTACTS, headers=busy.auth))
    sms, telegram, email = SAMPLES[0], SAMPLES[6], SAMPLES[10]
    assert [post_sample(client, busy.id, s) for s in (sms, telegram, email)] == [200] * 3
    assert stored(db, busy) == 3
    assert "rate_limited" not in client.get("/metrics").text


# The published contract


def test_openapi_documents_429_with_retry_after(app: FastAPI) -> None:
    """Every Contacts API operation documents a 429 problem with Retry-After; webhooks and
    /healthz do not."""
    paths = app.openapi()["paths"]
    limited = [
        (path, method, op)
        for path, ops in paths.items()
        for method, op in ops.items()
        if path.startswith("/api/")
    ]
    assert len(limited) >= 5
    for path, method, operation in limited:
        response = operation["responses"].get("429")
        assert response is not None, f"{method} {path}"
        assert response["headers"]["Retry-After"]["schema"]["type"] == "integer"
        assert "application/problem+json" in response["content"]
    assert "429" not in paths["/healthz"]["get"]["responses"]
    webhooks = [
        op for path, ops in paths.items() if path.startswith("/webhooks/") for op in ops.values()
    ]
    assert webhooks
    assert all("429" not in op["responses"] for op in webhooks)
