"""GET /healthz: 200 when the database and the broker answer, 503 problem naming what does not."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from intake.settings import Settings
from models.db import Database


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port whose kernel completes the TCP handshake but whose server never says a word."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # never accepted: connects succeed from the backlog, replies never come
        yield server.getsockname()[1]


def healthz(settings: Settings, db: Database) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = TestClient(create_app(settings, db=db)).get("/healthz")
    elapsed = time.monotonic() - started
    if response.status_code != 200:
        assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return response.status_code, body, elapsed


def test_healthy_is_200_ok(client: TestClient) -> None:
    """With the database and the embedded broker answering, /healthz is 200 and needs no key."""
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthy_with_redis_broker_is_200(db: Database, redis_url: str) -> None:
    """Production's pair, a real database and a real Redis broker, is healthy."""
    status, body, _ = healthz(Settings(database_url=db.url, broker_url=redis_url), db)
    assert (status, body) == (200, {"status": "ok"})


def test_unreachable_database_is_503_problem(redis_url: str) -> None:
    """A PostgreSQL that refuses connections makes /healthz a 503 problem naming the database."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/nowhere?connect_timeout=2"
    db = Database(url)
    try:
        status, body, _ = healthz(Settings(database_url=url, broker_url=redis_url), db)
    finally:
        db.dispose()
    assert status == 503
    assert body["errors"] == [{"field": "database", "message": "does not answer"}]


def test_sqlite_in_missing_folder_is_503_problem(tmp_path: Path, redis_url: str) -> None:
    """An embedded database whose folder does not exist cannot open: 503 naming the database."""
    url = f"sqlite:///{tmp_path / 'no-such-folder' / 'intake.db'}"
    db = Database(url)
    try:
        status, body, _ = healthz(Settings(database_url=url, broker_url=redis_url), db)
    finally:
        db.dispose()
    assert status == 503
    assert body["errors"] == [{"field": "database", "message": "does not answer"}]


def test_unreachable_broker_is_503_within_seconds(db: Database) -> None:
    """A Redis broker on a closed port is a 503 naming the broker, answered without long retries."""
    settings = Settings(database_url=db.url, broker_url=f"redis://127.0.0.1:{closed_port()}/0")
    status, body, elapsed = healthz(settings, db)
    assert status == 503
    assert body["errors"] == [{"field": "broker", "message": "does not answer"}]
    assert elapsed < 3.0


def test_silent_broker_is_503_within_seconds(db: Database, silent_server: int) -> None:
    """A broker that accepts the connection but never replies is down after about 2 s, not never."""
    settings = Settings(database_url=db.url, broker_url=f"redis://127.0.0.1:{silent_server}/0")
    status, body, elapsed = healthz(settings, db)
    assert status == 503
    assert body["errors"] == [{"field": "broker", "message": "does not answer"}]
    assert elapsed < 5.0


def test_both_down_are_both_named(tmp_path: Path) -> None:
    """With nothing answering, the problem names the database and the broker."""
    url = f"sqlite:///{tmp_path / 'missing' / 'intake.db'}"
    db = Database(url)
    try:
        settings = Settings(database_url=url, broker_url=f"redis://127.0.0.1:{closed_port()}/0")
        status, body, _ = healthz(settings, db)
    finally:
        db.dispose()
    assert status == 503
    assert [e["field"] for e in body["errors"]] == ["database", "broker"]


def test_a_failing_added_check_is_503(app: FastAPI) -> None:
    """Checks are a list: one appended later is reported by name when it fails."""

    def cache(_app: FastAPI) -> None:
        raise ConnectionError("cache down")

    app.state.health_checks.append(("cache", cache))
    response = TestClient(app).get("/healthz")
    assert response.status_code == 503
    assert [e["field"] for e in response.json()["errors"]] == ["cache"]


def test_silent_database_is_503_within_seconds_and_metrics_answer(
    tmp_path: Path, silent_server: int
) -> None:
    """A PostgreSQL that accepts connections and never answers makes /healthz a 503 naming the
    database, and /metrics a 200 with `intake_database_up 0`, each within a few seconds."""
    db = Database(f"postgresql+psycopg://postgres@127.0.0.1:{silent_server}/intake")
    settings = Settings(database_url=db.url, broker_url=f"sqla+sqlite:///{tmp_path}/broker.db")
    status, body, elapsed = healthz(settings, db)
    assert (status, [e["field"] for e in body["errors"]]) == (503, ["database"])
    assert elapsed < 5.0
    started = time.monotonic()
    metrics = TestClient(create_app(settings, db=db)).get("/metrics")
    assert metrics.status_code == 200
    assert "intake_database_up 0.0" in metrics.text
    assert time.monotonic() - started < 5.0
    db.dispose()
