"""Fixtures on real services: a PostgreSQL database and a Redis database of this test run's own.

Every test builds its own tenant, so tests never share data and may run against one database.
With INTAKE_REQUIRE_SERVICES=1 (CI), a missing PostgreSQL or Redis fails the run instead of
skipping the tests that need it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from models.db import Database
from models.migrate import upgrade

PG_ADMIN_DSN = os.environ.get("INTAKE_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres")
REDIS_BASE_URL = os.environ.get("INTAKE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REQUIRE_SERVICES = os.environ.get("INTAKE_REQUIRE_SERVICES") == "1"
# Marks a Redis database number as this run's; a test that empties its database must keep it.
REDIS_CLAIM_KEY = "intake:test:claim"


def _unavailable(what: str, error: Exception) -> None:
    message = f"{what} is not reachable ({error})"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}; INTAKE_REQUIRE_SERVICES=1 makes that a failure", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database of this run's own, migrated to head, dropped at the end."""
    name = f"intake_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(
            PG_ADMIN_DSN + " dbname=postgres", autocommit=True, connect_timeout=5
        )
    except psycopg.OperationalError as exc:
        _unavailable("PostgreSQL", exc)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    params = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_DSN)
    url = (
        f"postgresql+psycopg://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}"
        f":{params.get('port', 5432)}/{name}"
    )
    upgrade(url)
    yield url
    with psycopg.connect(PG_ADMIN_DSN + " dbname=postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'intake.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgres_db(postgres_url: str) -> Iterator[Database]:
    database = Database(postgres_url)
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def sqlite_db(sqlite_url: str) -> Iterator[Database]:
    database = Database(sqlite_url)
    yield database
    database.dispose()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`db` runs a test on SQLite and PostgreSQL; `postgres_only` tests on PostgreSQL alone."""
    if "db" in metafunc.fixturenames:
        only_pg = metafunc.definition.get_closest_marker("postgres_only") is not None
        backends = ["postgresql"] if only_pg else ["sqlite", "postgresql"]
        metafunc.parametrize("db", backends, indirect=True)


@pytest.fixture
def db(request: pytest.FixtureRequest) -> Database:
    """The same test on the embedded default and on production's database."""
    fixture = "sqlite_db" if request.param == "sqlite" else "postgres_db"
    database: Database = request.getfixturevalue(fixture)
    return database


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database number claimed by this run alone, flushed before and after."""
    try:
        probe = redis.Redis.from_url(REDIS_BASE_URL + "/0", socket_connect_timeout=5)
        probe.ping()
    except redis.RedisError as exc:
        _unavailable("Redis", exc)
    token = uuid.uuid4().hex
    for number in range(1, 16):
        client = redis.Redis.from_url(f"{REDIS_BASE_URL}/{number}")
        # A claim expires by itself, so a crashed run frees its database within the hour.
        if client.set(REDIS_CLAIM_KEY, token, nx=True, ex=3600):
            client.flushdb()
            client.set(REDIS_CLAIM_KEY, token, ex=3600)
            url = f"{REDIS_BASE_URL}/{number}"
            yield url
            client.flushdb()
            return
    pytest.fail("every Redis database 1-15 is claimed by another test run")


@pytest.fixture
def redis_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
