"""`intake key create/list/revoke` and `tenant configure --keep-previous`: output and errors."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest

from intake.durations import InvalidDurationError, parse_duration
from models.db import Database
from models.schema import Tenant
from models.tenants import channel_secrets_of
from tests.cli.test_cli import assert_one_line_error, intake


def new_tenant(db: Database) -> dict[str, str]:
    created: dict[str, str] = json.loads(
        intake("tenant", "create", "Keys Ltd", "--json", database_url=db.url).stdout
    )
    return created


def test_key_create_list_and_revoke(db: Database) -> None:
    """A named key is shown once, listed without itself or its hash, and revoked by id."""
    tenant = new_tenant(db)
    made = intake("key", "create", tenant["id"], "--name", "zapier", "--json", database_url=db.url)
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert set(key) == {"id", "name", "api_key"}
    assert key["name"] == "zapier"
    assert key["api_key"].startswith("intk_")

    listed = intake("key", "list", tenant["id"], "--json", database_url=db.url)
    assert listed.returncode == 0, listed.stderr
    keys = json.loads(listed.stdout)
    assert [(k["name"], k["revoked_at"]) for k in keys] == [("default", None), ("zapier", None)]
    assert {"id", "name", "created_at", "last_used_at"} <= set(keys[0])
    assert key["api_key"] not in listed.stdout
    assert tenant["api_key"] not in listed.stdout

    revoked = intake("key", "revoke", key["id"], database_url=db.url)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == f"revoked key {key['id']}"
    again = intake("key", "revoke", key["id"], database_url=db.url)
    assert again.returncode == 0, again.stderr
    assert "already revoked" in again.stdout
    plain = intake("key", "list", tenant["id"], database_url=db.url).stdout.splitlines()
    assert len(plain) == 2
    assert "name=default" in plain[0]
    assert "active" in plain[0]
    assert "name=zapier" in plain[1]
    assert "revoked" in plain[1]


def test_key_create_plain_prints_the_key_once_with_a_warning(db: Database) -> None:
    """Without --json the id, name and key are labelled lines, and stderr says it is shown once."""
    tenant = new_tenant(db)
    made = intake("key", "create", tenant["id"], database_url=db.url)
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["id", "name", "api_key"]
    assert "shown only this once" in made.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("key", "create", "nope"), "not a tenant id"),
        (("key", "create", str(uuid.uuid4())), "no tenant"),
        (("key", "list", "nope"), "not a tenant id"),
        (("key", "list", str(uuid.uuid4())), "no tenant"),
        (("key", "revoke", "nope"), "not a key id"),
        (("key", "revoke", str(uuid.uuid4())), "no API key"),
    ],
)
def test_bad_key_input_is_a_one_line_error(
    db: Database, args: tuple[str, ...], fragment: str
) -> None:
    """Unknown or malformed tenants and keys exit non-zero with one line."""
    assert_one_line_error(intake(*args, database_url=db.url), fragment)


def test_a_blank_key_name_is_a_one_line_error(db: Database) -> None:
    """`--name ''` is refused, and no key is made."""
    tenant = new_tenant(db)
    assert_one_line_error(
        intake("key", "create", tenant["id"], "--name", " ", database_url=db.url), "cannot be empty"
    )
    listed = json.loads(intake("key", "list", tenant["id"], "--json", database_url=db.url).stdout)
    assert len(listed) == 1


def test_configure_keep_previous_keeps_the_old_secret_for_that_long(db: Database) -> None:
    """`--keep-previous 24h` stores the replaced secret with its end, and says when that is."""
    tenant = new_tenant(db)
    first = intake(
        "tenant", "configure", tenant["id"], "twilio_auth_token=old", database_url=db.url
    )
    assert first.returncode == 0, first.stderr
    result = intake(
        "tenant",
        "configure",
        tenant["id"],
        "twilio_auth_token=new",
        "--keep-previous",
        "24h",
        database_url=db.url,
    )
    assert result.returncode == 0, result.stderr
    assert "the previous twilio_auth_token stays valid until" in result.stdout
    with db.sessions() as session:
        row = session.get(Tenant, uuid.UUID(tenant["id"]))
        assert row is not None
        secrets = channel_secrets_of(row)
    assert secrets.current == {"twilio_auth_token": "new"}
    [(value, until)] = secrets.previous.values()
    assert value == "old"
    assert row.created_at + timedelta(hours=23) < until < row.created_at + timedelta(hours=25)


@pytest.mark.parametrize(
    ("duration", "fragment"), [("soon", "not a duration"), ("0s", "above 0"), ("31d", "30 days")]
)
def test_a_bad_keep_previous_is_a_one_line_error(
    db: Database, duration: str, fragment: str
) -> None:
    """An unreadable or out-of-bounds duration is refused and the secret is unchanged."""
    tenant = new_tenant(db)
    intake("tenant", "configure", tenant["id"], "twilio_auth_token=old", database_url=db.url)
    result = intake(
        "tenant",
        "configure",
        tenant["id"],
        "twilio_auth_token=new",
        "--keep-previous",
        duration,
        database_url=db.url,
    )
    assert_one_line_error(result, fragment)
    with db.sessions() as session:
        row = session.get(Tenant, uuid.UUID(tenant["id"]))
        assert row is not None
        assert row.secrets == {"twilio_auth_token": "old"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("24h", timedelta(hours=24)),
        ("2d", timedelta(days=2)),
        ("1h30m", timedelta(minutes=90)),
        (" 12H ", timedelta(hours=12)),
    ],
)
def test_durations_read_as_people_write_them(text: str, expected: timedelta) -> None:
    """Whole numbers with s, m, h or d, alone or in sequence."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "24", "h", "1.5h", "-1h", "1 h", "1w", "99999999999999d"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    """No unit, an unknown unit, a fraction, a sign, a space or an overflow is refused."""
    with pytest.raises(InvalidDurationError):
        parse_duration(text)
