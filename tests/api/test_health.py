"""GET /healthz: 200 when the database answers, 503 problem when it does not."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from intake.settings import Settings
from models.db import Database


def test_healthy_is_200_ok(client: TestClient) -> None:
    """With the database answering, /healthz is 200 {"status": "ok"} and needs no key."""
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_unreachable_database_is_503_problem() -> None:
    """A database that refuses connections makes /healthz a 503 problem naming it."""
    url = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere?connect_timeout=2"
    db = Database(url)
    try:
        client = TestClient(create_app(Settings(database_url=url), db=db))
        response = client.get("/healthz")
    finally:
        db.dispose()
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"] == [{"field": "database", "message": "does not answer"}]


def test_a_failing_added_check_is_503(app: FastAPI) -> None:
    """Checks are a list: one appended later (a broker, say) is reported by name when it fails."""

    def broker(_app: FastAPI) -> None:
        raise ConnectionError("broker down")

    app.state.health_checks.append(("broker", broker))
    response = TestClient(app).get("/healthz")
    assert response.status_code == 503
    assert [e["field"] for e in response.json()["errors"]] == ["broker"]
