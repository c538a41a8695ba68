"""The shared WhatsApp route end to end: `intake serve` and `intake worker` as subprocesses
configured only through the environment (INTAKE_WHATSAPP_APP_SECRET, _VERIFY_TOKEN), real
PostgreSQL and Redis, and the contacts read back through each tenant's Contacts API.

Waits are on what the Contacts API shows, with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from intake.server import free_port
from models.db import Database
from tests.api.webhook_payloads import unique_digits
from tests.api.whatsapp_shared_payloads import (
    APP_SECRET,
    VERIFY_TOKEN,
    message_change,
    notification,
    post_shared,
    register,
    unique_phone_number_id,
)
from tests.factories import TenantFixture, make_tenant
from tests.worker.test_end_to_end import REPO, Workers, wait_for, worker_env

pytestmark = pytest.mark.e2e

CONTACTS = "/api/v1/contacts"
WAIT_SECONDS = 20.0


@pytest.fixture(scope="module")
def env(postgres_url: str, redis_url: str) -> dict[str, str]:
    return worker_env(
        postgres_url,
        redis_url,
        redis_url,
        INTAKE_WHATSAPP_APP_SECRET=APP_SECRET,
        INTAKE_WHATSAPP_VERIFY_TOKEN=VERIFY_TOKEN,
    )


@pytest.fixture(scope="module")
def served(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`intake serve` on a free loopback port; its URL once /healthz answers."""
    cwd = tmp_path_factory.mktemp("shared-serve")
    port = free_port()
    log = (cwd / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "intake", "serve", "--port", str(port)],
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("intake serve did not answer /healthz:\n" + (cwd / "serve.log").read_text())
        time.sleep(0.1)  # polling a condition with a deadline
    yield url
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def worker(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    workers = Workers(env, tmp_path_factory.mktemp("shared-worker"))
    workers.start(1)
    yield workers
    workers.kill_all()


@pytest.fixture
def http(served: str, worker: Workers) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served, timeout=10) as client:
        yield client


def contacts(http: httpx.Client, tenant: TenantFixture) -> list[dict[str, Any]]:
    listed = http.get(CONTACTS, headers=tenant.auth)
    assert listed.status_code == 200, listed.text
    data: list[dict[str, Any]] = listed.json()["data"]
    return data


def wait_for_contacts(
    http: httpx.Client, tenant: TenantFixture, worker: Workers, count: int
) -> list[dict[str, Any]]:
    wait_for(
        lambda: len(contacts(http, tenant)) >= count,
        timeout=WAIT_SECONDS,
        what=f"{count} contact(s) of tenant {tenant.id}\n{worker.logs()}",
    )
    return contacts(http, tenant)


def test_shared_route_messages_become_contacts_of_their_own_tenants(
    http: httpx.Client, postgres_db: Database, worker: Workers
) -> None:
    """One POST with changes for two tenants' numbers: each tenant gets its sender, only it."""
    landlord, agency = make_tenant(postgres_db), make_tenant(postgres_db)
    landlord_number, agency_number = unique_phone_number_id(), unique_phone_number_id()
    register(postgres_db, landlord.id, landlord_number)
    register(postgres_db, agency.id, agency_number)
    sheena, priya = f"+1415{unique_digits(7)}", f"+4477009{unique_digits(5)}"
    payload = notification(
        [message_change(landlord_number, phone=sheena, name="Sheena Nelson")],
        [message_change(agency_number, phone=priya, name="Priya Patel")],
    )
    response = post_shared(http, payload)
    assert response.status_code == 200, response.text
    assert post_shared(http, payload).status_code == 200  # Meta's redelivery changes nothing

    [mine] = wait_for_contacts(http, landlord, worker, 1)
    [theirs] = wait_for_contacts(http, agency, worker, 1)
    assert (mine["name"], mine["phone"], mine["source"]) == ("Sheena Nelson", sheena, "whatsapp")
    assert (theirs["name"], theirs["phone"], theirs["source"]) == ("Priya Patel", priya, "whatsapp")
    messages = http.get(f"{CONTACTS}/{mine['id']}/messages", headers=landlord.auth).json()["data"]
    assert [m["channel"] for m in messages] == ["whatsapp"]
    # Neither tenant can reach the other's contact.
    assert http.get(f"{CONTACTS}/{theirs['id']}", headers=landlord.auth).status_code == 404


def test_unrouted_change_is_kept_and_becomes_a_contact_once_replayed(
    http: httpx.Client, postgres_db: Database, worker: Workers, env: dict[str, str]
) -> None:
    """An unrouted change, replayed after its number is registered, becomes that tenant's."""
    tenant = make_tenant(postgres_db)
    number, phone = unique_phone_number_id(), f"+1415{unique_digits(7)}"
    payload = notification([message_change(number, phone=phone, name="Ana Souza")])
    assert post_shared(http, payload).status_code == 200

    def intake(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "intake", *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    listed = intake("events", "unrouted")
    assert listed.returncode == 0, listed.stderr
    [line] = [ln for ln in listed.stdout.splitlines() if f"phone_number_id={number}" in ln]
    change_id = line.split()[0]
    configured = intake("tenant", "configure", str(tenant.id), f"whatsapp_phone_number_id={number}")
    assert configured.returncode == 0, configured.stderr
    replayed = intake("events", "replay", change_id)
    assert replayed.returncode == 0, replayed.stderr
    [contact] = wait_for_contacts(http, tenant, worker, 1)
    assert (contact["name"], contact["phone"]) == ("Ana Souza", phone)
