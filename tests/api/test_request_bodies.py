"""Request bodies: the Contacts API refuses one over 1 MiB while reading it, and a client that
hangs up mid-body is an info line, never an error with a traceback."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from intake.settings import Settings
from intake.signing import DEMO_SECRETS
from models.db import Database
from tests.api.conftest import CONTACTS
from tests.factories import TenantFixture, make_tenant

MIB = 1024 * 1024


def assert_413(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 413


def test_declared_body_over_1_mib_is_413(client: TestClient, tenant: TenantFixture) -> None:
    """A create declaring more than 1 MiB is refused before its body is read."""
    body = b'{"name": "' + b"x" * (MIB + 1) + b'"}'
    response = client.post(
        CONTACTS, content=body, headers={**tenant.auth, "content-type": "application/json"}
    )
    assert_413(response)


def test_undeclared_body_over_1_mib_is_413(live_server: str, tenant: TenantFixture) -> None:
    """A chunked create (no Content-Length) is refused once more than 1 MiB has arrived."""

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(20):
            yield b"x" * (128 * 1024)
        yield b'"}'

    response = httpx.post(
        live_server + CONTACTS,
        content=chunks(),
        headers={**tenant.auth, "content-type": "application/json"},
        timeout=30,
    )
    assert_413(response)


def test_a_body_under_the_limit_is_served(client: TestClient, tenant: TenantFixture) -> None:
    """A create well under 1 MiB passes the limit and is validated as usual (a 400 here)."""
    response = client.post(CONTACTS, json={"name": "x" * 1000}, headers=tenant.auth)
    assert response.status_code == 400, response.text


@pytest.mark.parametrize("path", ["webhook", "shared", "api"])
def test_a_client_hanging_up_mid_body_is_an_info_line(
    app: FastAPI,
    live_server: str,
    db: Database,
    caplog: pytest.LogCaptureFixture,
    path: str,
) -> None:
    """A client that promises a body and closes the connection half way leaves an info line and
    no error record with a traceback, on a tenant's webhook, the shared one and the API."""
    tenant = make_tenant(db, **DEMO_SECRETS)
    # The shared WhatsApp route reads a body only once the operator's app secret is set.
    app.state.settings = Settings(database_url=db.url, whatsapp_app_secret="operator-secret")
    target = {
        "webhook": f"/webhooks/{tenant.id}/twilio",
        "shared": "/webhooks/whatsapp",
        "api": CONTACTS,
    }[path]
    url = urlsplit(live_server)
    with caplog.at_level(logging.INFO):
        with socket.create_connection((url.hostname, url.port)) as conn:
            conn.sendall(
                (
                    f"POST {target} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                    f"Authorization: Bearer {tenant.api_key}\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\n"
                    "Content-Length: 100000\r\n\r\n"
                ).encode()
                + b"From=%2B1415"
            )
        deadline = time.monotonic() + 10
        while not any("client_gone" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.02)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert all(r.exc_info is None for r in caplog.records)
