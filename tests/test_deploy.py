"""docker-compose.yml is valid Compose and wires the services the way production needs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose_command() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    message = "neither `docker compose` nor `docker-compose` is installed"
    if os.environ.get("INTAKE_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " (.ci/run installs docker-compose)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    result = subprocess.run(
        [*compose_command(), "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)
    return loaded


def test_compose_has_every_role(config: dict[str, Any]) -> None:
    """PostgreSQL, Redis, the migration, the app, the workers and the delivery worker."""
    assert set(config["services"]) == {
        "postgres",
        "redis",
        "migrate",
        "app",
        "worker",
        "deliveries",
    }


def test_app_and_workers_wait_for_migration_and_redis(config: dict[str, Any]) -> None:
    """Nothing serves before the schema is migrated and Redis is healthy."""
    for name in ("app", "worker", "deliveries"):
        depends = config["services"][name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    assert config["services"]["migrate"]["depends_on"]["postgres"]["condition"] == (
        "service_healthy"
    )


def test_services_have_healthchecks(config: dict[str, Any]) -> None:
    """PostgreSQL, Redis and the app report their health."""
    for name in ("postgres", "redis", "app"):
        assert config["services"][name]["healthcheck"]["test"]


def test_redis_keeps_the_queue(config: dict[str, Any]) -> None:
    """Redis persists to disk and never evicts queued work."""
    command = " ".join(config["services"]["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command


def test_app_points_at_postgres_and_redis(config: dict[str, Any]) -> None:
    """The image runs on production's database and broker, not the embedded defaults."""
    env = config["services"]["app"]["environment"]
    assert env["INTAKE_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["INTAKE_BROKER_URL"].startswith("redis://redis:6379")
    assert env["INTAKE_REDIS_URL"].startswith("redis://redis:6379")


def test_app_spools_to_a_volume(config: dict[str, Any]) -> None:
    """The app's spool directory is a named volume, so a restarted container drains it."""
    app = config["services"]["app"]
    spool_dir = app["environment"]["INTAKE_SPOOL_DIR"]
    # Compose v2 prints long-form mounts, v1 the short `source:target` strings.
    mounts = [
        v if isinstance(v, dict) else dict(zip(("source", "target"), v.split(":")[:2], strict=True))
        for v in app["volumes"]
    ]
    sources = [m["source"] for m in mounts if m["target"] == spool_dir]
    assert sources, app["volumes"]
    assert sources[0] in config["volumes"]


def test_shared_whatsapp_route_secrets_reach_the_app() -> None:
    """INTAKE_WHATSAPP_APP_SECRET and _VERIFY_TOKEN set for `docker compose up` reach the app,
    as README's shared-route section tells the operator to set them."""
    env = {
        **os.environ,
        "INTAKE_WHATSAPP_APP_SECRET": "app-secret",
        "INTAKE_WHATSAPP_VERIFY_TOKEN": "verify-token",
    }
    result = subprocess.run(
        [*compose_command(), "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    environment = yaml.safe_load(result.stdout)["services"]["app"]["environment"]
    assert environment["INTAKE_WHATSAPP_APP_SECRET"] == "app-secret"
    assert environment["INTAKE_WHATSAPP_VERIFY_TOKEN"] == "verify-token"
