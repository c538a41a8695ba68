"""The `intake` command: its output, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from models.api_keys import hash_api_key
from models.db import Database
from models.schema import ApiKey, Message, Tenant
from tests.api.conftest import make_message
from tests.api.test_health import closed_port
from tests.factories import make_tenant

ROOT = Path(__file__).resolve().parents[2]


def intake(
    *args: str, database_url: str, cwd: Path | None = None, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "INTAKE_DATABASE_URL": database_url,
        "PYTHONPATH": str(ROOT),
        **extra_env,
    }
    return subprocess.run(
        [sys.executable, "-m", "intake", *args],
        env=env,
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]


def test_tenant_create_json_prints_id_name_and_key(db: Database) -> None:
    """`tenant create --json` prints id, name and a key that is stored only as a hash."""
    result = intake(
        "tenant", "create", "Acme Lettings", "--region", "gb", "--json", database_url=db.url
    )
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert set(created) == {"id", "name", "api_key"}
    assert created["name"] == "Acme Lettings"
    with db.unit_of_work() as session:
        tenant = session.get(Tenant, uuid.UUID(created["id"]))
        assert tenant is not None
        assert tenant.region == "GB"
        hashes = session.scalars(select(ApiKey.key_hash).where(ApiKey.tenant_id == tenant.id))
        assert list(hashes) == [hash_api_key(created["api_key"])]


def test_tenant_create_plain_prints_id_and_key(db: Database) -> None:
    """Without --json the id and the key are printed as labelled lines."""
    result = intake("tenant", "create", "Plain", database_url=db.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("id: ")
    assert "api_key: intk_" in result.stdout


def test_tenant_configure_sets_secrets(db: Database) -> None:
    """`tenant configure` stores channel secrets on the tenant."""
    created = json.loads(intake("tenant", "create", "T", "--json", database_url=db.url).stdout)
    result = intake(
        "tenant",
        "configure",
        created["id"],
        "twilio_auth_token=abc",
        "telegram_secret_token=s3cret",
        database_url=db.url,
    )
    assert result.returncode == 0, result.stderr
    with db.unit_of_work() as session:
        tenant = session.get(Tenant, uuid.UUID(created["id"]))
        assert tenant is not None
        assert tenant.secrets == {"twilio_auth_token": "abc", "telegram_secret_token": "s3cret"}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("tenant", "create", "X", "--region", "ZZ"), "unknown region"),
        (("tenant", "create", "  "), "needs a name"),
        (("tenant", "create", "n" * 301), "at most 200 characters"),
        (("worker", "--concurrency", "0"), "--concurrency takes a whole number of 1 or more"),
        (("tenant", "configure", "not-a-uuid", "twilio_auth_token=x"), "not a tenant id"),
        (("tenant", "configure", str(uuid.uuid4()), "twilio_auth_token=x"), "no tenant"),
        (("events", "replay", "nope"), "not a message id"),
        (("events", "replay", str(uuid.uuid4())), "no failed message"),
        (("events", "failed", "--tenant", str(uuid.uuid4())), "no tenant"),
        (("events", "failed", "--tenant", "x"), "not a tenant id"),
    ],
)
def test_bad_input_is_a_one_line_error(db: Database, args: tuple[str, ...], fragment: str) -> None:
    """Bad input exits non-zero with one line, never a traceback."""
    assert_one_line_error(intake(*args, database_url=db.url), fragment)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("serve", "--port", "abc"), "not a port number: 'abc'"),
        (("tenant", "configure", str(uuid.uuid4()), "--keep-previous"), "expected one argument"),
        (("bogus",), "invalid choice: 'bogus'"),
        (("key", "create"), "the following arguments are required: tenant_id"),
        ((), "the following arguments are required: COMMAND"),
        (("serve", "--port", "99999"), "a port is 1-65535, not 99999"),
        (("dev", "--port", "0"), "a port is 1-65535, not 0"),
    ],
)
def test_usage_error_is_a_one_line_error(args: tuple[str, ...], fragment: str) -> None:
    """A usage mistake argparse catches is one line on stderr too, not the usage text."""
    result = intake(*args, database_url="sqlite:///unused.db")
    assert result.returncode == 2
    assert_one_line_error(result, fragment)


def test_serve_on_a_port_in_use_is_a_one_line_error() -> None:
    """`intake serve` on a taken port says so in one line, before uvicorn starts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = intake("serve", "--port", str(port), database_url="sqlite:///unused.db")
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}: Address already in use")


def test_serve_on_a_host_that_does_not_resolve_is_a_one_line_error() -> None:
    """A --host that is no address and no name is one line, not uvicorn's start-up and error."""
    result = intake("serve", "--host", "256.1.1.1", database_url="sqlite:///unused.db")
    assert_one_line_error(result, "cannot listen on 256.1.1.1:8000")


def test_phone_number_id_error_keeps_its_quotes(db: Database) -> None:
    """A refused phone number id is quoted whole in the error line."""
    created = json.loads(intake("tenant", "create", "T", "--json", database_url=db.url).stdout)
    result = intake(
        "tenant", "configure", created["id"], "whatsapp_phone_number_id=abc", database_url=db.url
    )
    assert_one_line_error(result, "not 'abc'")


def test_unknown_configure_key_is_refused(db: Database) -> None:
    """An unknown secret name is refused and nothing is stored."""
    created = json.loads(intake("tenant", "create", "T", "--json", database_url=db.url).stdout)
    result = intake(
        "tenant", "configure", created["id"], "twilio_auth_token=a", "bogus=1", database_url=db.url
    )
    assert_one_line_error(result, "unknown key 'bogus'")
    with db.unit_of_work() as session:
        tenant = session.get(Tenant, uuid.UUID(created["id"]))
        assert tenant is not None
        assert tenant.secrets == {}


def test_invalid_setting_is_a_one_line_error(db: Database) -> None:
    """A malformed INTAKE_* variable names itself instead of raising."""
    env = {
        **os.environ,
        "INTAKE_DATABASE_URL": db.url,
        "PYTHONPATH": str(ROOT),
        "INTAKE_MAX_ATTEMPTS": "many",
    }
    result = subprocess.run(
        [sys.executable, "-m", "intake", "tenant", "create", "X"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert_one_line_error(result, "INTAKE_MAX_ATTEMPTS")


def test_unreachable_database_is_a_one_line_error() -> None:
    """A database that does not answer is reported in one line."""
    result = intake(
        "tenant", "create", "X", database_url="postgresql+psycopg://postgres@127.0.0.1:9/nowhere"
    )
    assert_one_line_error(result, "cannot reach the database")


@pytest.mark.parametrize("url", ["nonsense", "mysql://x@127.0.0.1/y"])
def test_unusable_database_url_is_a_one_line_error(url: str) -> None:
    """A URL SQLAlchemy cannot use is named in one line, not a traceback."""
    assert_one_line_error(intake("tenant", "create", "X", database_url=url), "unusable database")


def test_unmigrated_database_says_to_migrate(tmp_path: Path) -> None:
    """A database without the schema says which command makes it."""
    result = intake("tenant", "create", "X", database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    assert_one_line_error(result, "intake migrate")


def test_migrate_creates_the_schema_on_the_embedded_default(tmp_path: Path) -> None:
    """`intake migrate` with no configuration makes ./intake.db."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "intake", "migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "intake.db").exists()


def test_plain_postgresql_url_uses_psycopg(postgres_url: str) -> None:
    """`postgresql://…` (no driver) works: it is read as psycopg 3, the driver we ship."""
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    result = intake("tenant", "create", "Plain URL", "--json", database_url=plain)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "Plain URL"


def test_replay_with_the_broker_down_is_a_one_line_error(db: Database) -> None:
    """`events replay` with the broker refusing connections exits non-zero with one line that
    says the messages are pending again (the reconciler queues them), never a traceback."""
    tenant = make_tenant(db)
    message_id = make_message(db, tenant.id, None, state="failed")
    result = intake(
        "events",
        "replay",
        str(message_id),
        database_url=db.url,
        INTAKE_BROKER_URL=f"redis://127.0.0.1:{closed_port()}/0",
    )
    assert_one_line_error(result, "the broker does not answer")
    with db.sessions() as session:
        assert session.get(Message, message_id).state == "pending"  # type: ignore[union-attr]
