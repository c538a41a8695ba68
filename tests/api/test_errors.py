"""Every error is an RFC 9457 problem: authentication, routing, validation, the unexpected."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from intake.settings import Settings
from models.db import Database
from tests.api.conftest import CONTACTS
from tests.factories import TenantFixture

PROBLEM_MEMBERS = {"type", "title", "status", "detail", "errors"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer intk_wrong"},
        {"Authorization": "Basic dXNlcjpwdw=="},
        {"Authorization": "Bearer "},
        {"Authorization": "intk_no_scheme"},
    ],
)
def test_missing_or_wrong_key_is_401_with_challenge(
    client: TestClient, headers: dict[str, str]
) -> None:
    """No key, a wrong key or another scheme: 401 problem with WWW-Authenticate: Bearer."""
    response = client.get(CONTACTS, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert set(problem) >= PROBLEM_MEMBERS
    assert problem["status"] == 401
    assert problem["title"] == "Unauthorized"


def test_revoked_key_is_401(client: TestClient, db: Database, tenant: TenantFixture) -> None:
    """A revoked API key no longer authenticates."""
    from sqlalchemy import update

    from models.api_keys import hash_api_key
    from models.schema import ApiKey, utcnow

    assert client.get(CONTACTS, headers=tenant.auth).status_code == 200
    with db.unit_of_work() as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.key_hash == hash_api_key(tenant.api_key))
            .values(revoked_at=utcnow())
        )
    assert client.get(CONTACTS, headers=tenant.auth).status_code == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", CONTACTS),
        ("POST", CONTACTS),
        ("GET", f"{CONTACTS}/x"),
        ("PATCH", f"{CONTACTS}/x"),
        ("DELETE", f"{CONTACTS}/x"),
        ("GET", f"{CONTACTS}/x/messages"),
        ("POST", f"{CONTACTS}/x/merge"),
        ("GET", f"{CONTACTS}/x/identities"),
        ("GET", f"{CONTACTS}/x/merges"),
        ("POST", f"{CONTACTS}/x/merges/y/undo"),
    ],
)
def test_every_contacts_route_needs_a_key(client: TestClient, method: str, path: str) -> None:
    """Each route of the Contacts API answers 401 without a key."""
    response = client.request(method, path, json={"name": "x", "email": "a@example.com"})
    assert response.status_code == 401


@pytest.mark.parametrize(
    "url",
    [
        f"{CONTACTS}?limit=1&limit=2",
        f"{CONTACTS}?limit=abc",
        f"{CONTACTS}/x/messages?page=1&page=2",
        "/api/v1/events?limit=1&limit=2",
        "/api/v1/webhook-endpoints?x=1&x=2",
    ],
)
def test_a_bad_query_without_a_key_is_401(client: TestClient, url: str) -> None:
    """Without a valid key the answer is a 401, whatever is wrong with the query as well."""
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": "Bearer intk_wrong"}).status_code == 401


def test_a_route_without_a_query_ignores_one(client: TestClient, tenant: TenantFixture) -> None:
    """A route that reads no query (get by id) is not made a 400 by a repeated parameter."""
    created = client.post(
        CONTACTS, json={"name": "Q", "email": "q@example.com"}, headers=tenant.auth
    ).json()
    response = client.get(f"{CONTACTS}/{created['id']}?x=1&x=2", headers=tenant.auth)
    assert (response.status_code, response.json()["id"]) == (200, created["id"])


def test_unknown_route_is_404_problem(client: TestClient) -> None:
    """A URL that names nothing is a 404 problem, not HTML or FastAPI's default JSON."""
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert set(response.json()) >= PROBLEM_MEMBERS


def test_wrong_method_is_405_problem_with_allow(client: TestClient) -> None:
    """A method the route does not take is a 405 problem with an Allow header."""
    response = client.put(CONTACTS, json={})
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert response.json()["status"] == 405


def test_validation_problem_is_400_not_422(client: TestClient, tenant: TenantFixture) -> None:
    """Request validation answers 400 with one error per bad field, each field named."""
    response = client.get(CONTACTS, params={"page": "x", "limit": "0"}, headers=tenant.auth)
    assert response.status_code == 400
    problem = response.json()
    assert problem["type"].endswith("invalid-request")
    assert problem["title"] == "Bad Request"
    assert {e["field"] for e in problem["errors"]} == {"page", "limit"}
    assert "page" in problem["detail"]


def test_unexpected_error_is_500_problem_without_traceback(
    app: FastAPI, tenant: TenantFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception is a 500 problem that leaks nothing, and it is logged."""

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals at /srv/app.py line 3")

    client = TestClient(app, raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="intake.api"):
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert set(problem) >= PROBLEM_MEMBERS
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert any("request.failed" in r.getMessage() for r in caplog.records)


def test_database_failure_in_a_route_is_500_problem(tenant: TenantFixture, db: Database) -> None:
    """A database that stops answering mid-request gives a 500 problem, not a crash."""
    from api.app import create_app
    from intake.settings import Settings

    app = create_app(Settings(database_url=db.url), db=db)
    client = TestClient(app, raise_server_exceptions=False)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("database went away")

    import models.contacts

    original = models.contacts.list_contacts
    models.contacts.list_contacts = broken  # type: ignore[assignment]
    try:
        response = client.get(CONTACTS, headers=tenant.auth)
    finally:
        models.contacts.list_contacts = original
    assert response.status_code == 500
    assert response.json()["status"] == 500


def test_database_down_is_a_503_not_a_500() -> None:
    """An unreachable database is the server's trouble: 503 problem+json with Retry-After."""
    app = create_app(Settings(database_url="postgresql+psycopg://postgres@127.0.0.1:9/nowhere"))
    with TestClient(app, raise_server_exceptions=False) as down:
        response = down.get("/api/v1/contacts", headers={"Authorization": "Bearer intk_x"})
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "5"
    assert response.json()["status"] == 503
