"""API keys on the Contacts API: every key of a tenant works, a revoked one is a 401 at once
(in this process and in another `intake serve` process), and use is recorded once a minute."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from intake.server import BackgroundServer
from intake.settings import Settings
from models.api_keys import issue_api_key, revoke_api_key
from models.db import Database
from models.schema import ApiKey
from tests.api.conftest import CONTACTS, create
from tests.factories import TenantFixture, make_tenant
from tests.support import REPO, ServeProcess, intake_env, wait_for


def another_key(
    db: Database, tenant: TenantFixture, name: str | None = None
) -> tuple[uuid.UUID, str]:
    with db.unit_of_work() as session:
        new = issue_api_key(session, tenant_id=tenant.id, name=name)
        return new.key.id, new.api_key


def bearer(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def test_every_key_works_until_revoked_and_then_is_401(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """Two keys of a tenant both list its contacts; the revoked one is refused on the next call."""
    contact = create(client, tenant)
    key_id, second = another_key(db, tenant, "rotation")
    for key in (tenant.api_key, second):
        response = client.get(CONTACTS, headers=bearer(key))
        assert response.status_code == 200
        assert [c["id"] for c in response.json()["data"]] == [contact["id"]]
    with db.unit_of_work() as session:
        revoke_api_key(session, key_id=key_id)
    refused = client.get(CONTACTS, headers=bearer(second))
    assert refused.status_code == 401
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert client.get(CONTACTS, headers=tenant.auth).status_code == 200


def test_a_new_key_of_one_tenant_never_reaches_another(
    client: TestClient, db: Database, tenant: TenantFixture, other_tenant: TenantFixture
) -> None:
    """A key made with `key create` for one tenant sees only that tenant's contacts."""
    theirs = create(client, other_tenant)
    _, ours = another_key(db, tenant)
    listed = client.get(CONTACTS, headers=bearer(ours))
    assert listed.status_code == 200
    assert listed.json()["data"] == []
    assert client.get(f"{CONTACTS}/{theirs['id']}", headers=bearer(ours)).status_code == 404


def test_use_is_recorded_on_the_first_request_and_not_on_each(
    client: TestClient, db: Database, tenant: TenantFixture
) -> None:
    """`last_used_at` is set by a request and left alone by the next one within the minute."""
    key_id, key = another_key(db, tenant)

    def last_used() -> object:
        with db.sessions() as session:
            row = session.get(ApiKey, key_id)
            assert row is not None
            return row.last_used_at

    assert last_used() is None
    assert client.get(CONTACTS, headers=bearer(key)).status_code == 200
    first = last_used()
    assert first is not None
    assert client.get(CONTACTS, headers=bearer(key)).status_code == 200
    assert last_used() == first


@pytest.fixture
def two_app_processes(
    postgres_url: str, redis_url: str, postgres_db: Database, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """This process's app on one port, and a real `intake serve` process on another."""
    settings = Settings(database_url=postgres_url, broker_url=redis_url, redis_url=redis_url)
    here = BackgroundServer(create_app(settings, db=postgres_db))
    there = ServeProcess(intake_env(postgres_url, redis_url, redis_url), tmp_path)
    here.start()
    try:
        there.wait_ready()
        yield here.url, there.url
    finally:
        there.stop()
        here.stop()


@pytest.mark.e2e
def test_a_revoked_key_is_refused_by_another_app_process_within_a_second(
    postgres_db: Database, postgres_url: str, two_app_processes: tuple[str, str]
) -> None:
    """`intake key revoke` in a third process: both app processes answer 401 within 1 s."""
    tenant = make_tenant(postgres_db)
    key_id, key = another_key(postgres_db, tenant)
    urls = list(two_app_processes)

    def statuses(api_key: str) -> list[int]:
        return [
            httpx.get(url + CONTACTS, headers=bearer(api_key), timeout=5).status_code
            for url in urls
        ]

    assert statuses(key) == [200, 200]
    revoked = subprocess.run(
        [sys.executable, "-m", "intake", "key", "revoke", str(key_id)],
        env=intake_env(postgres_url),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert revoked.returncode == 0, revoked.stderr
    took = wait_for(lambda: statuses(key) == [401, 401], timeout=1.0, what="both to refuse")
    assert took < 1.0
    assert statuses(tenant.api_key) == [200, 200]
