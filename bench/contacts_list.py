"""Latency of GET /api/v1/contacts at 100,000 contacts in one tenant, through the real server.

Makes a throwaway PostgreSQL database, migrates it, COPYs the contacts in, starts
`python -m intake serve` on a free loopback port and times sequential requests (one
keep-alive client, so this is server latency, not throughput). The database is dropped after.

    ./run bench contacts_list [--contacts N] [--requests N] [--dsn "host=… user=…"]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.db import Database  # noqa: E402  (the repository root goes on the path first)
from models.migrate import upgrade  # noqa: E402
from models.tenants import create_tenant  # noqa: E402

TARGET_MEDIAN_MS = 25.0
FIRST = ["Jane", "John", "Maria", "Wei", "Aisha", "Carlos", "Olga", "Kenji", "Fatima", "Liam"]
LAST = ["Smith", "Garcia", "Chen", "Okafor", "Novak", "Silva", "Khan", "Tanaka", "Muller", "Brown"]
STATUSES = ["prospect"] * 6 + ["scheduled", "applicant", "renter", "archived"]
CASES = {
    "no filter": {},
    "status filter": {"status": "applicant"},
    "name search": {"search": "okafor"},
    "phone-digits search": {"search": "555-0142"},
}


@contextmanager
def throwaway_database(admin_dsn: str) -> Iterator[str]:
    name = f"intake_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn + " dbname=postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    url = (
        f"postgresql+psycopg://{params.get('user', 'postgres')}@"
        f"{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}/{name}"
    )
    try:
        yield url
    finally:
        with psycopg.connect(admin_dsn + " dbname=postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def load_contacts(url: str, tenant_id: uuid.UUID, count: int) -> None:
    """COPY `count` contacts, created over the last year; one phone in 1,000 contains 555-0142."""
    rng = random.Random(42)
    start = datetime.now(UTC) - timedelta(days=365)
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    columns = (
        "id, tenant_id, name, email, phone, status, role, channel_preference, source, "
        "referral_source, language, created_at, updated_at"
    )
    with (
        psycopg.connect(dsn) as connection,
        connection.cursor() as cursor,
        cursor.copy(f"COPY contacts ({columns}) FROM STDIN") as copy,
    ):
        for i in range(count):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            created = start + timedelta(seconds=rng.uniform(0, 365 * 86400))
            # Unique by construction: (area, number) pairs never repeat below 800M rows.
            if i % 1000 == 0:
                phone = f"+1{200 + i // 1000 % 800}5550142"
            else:
                phone = f"+1{200 + i % 800}{i // 800:07d}"
            copy.write_row(
                (
                    uuid.uuid4(),
                    tenant_id,
                    f"{first} {last} {i}",
                    f"{first.lower()}.{last.lower()}.{i}@example.com",
                    phone,
                    rng.choice(STATUSES),
                    "prospect",
                    rng.choice(["sms", "email", None]),
                    "api",
                    None,
                    "en",
                    created,
                    created,
                )
            )
    # What autovacuum would have done by the time anyone lists them: fresh statistics for the
    # planner and a visibility map, without which index-only scans must visit the heap.
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE contacts")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serve(url: str) -> Iterator[str]:
    port = free_port()
    # The benchmark is one tenant on purpose far over any sane per-tenant rate limit.
    env = {
        **os.environ,
        "INTAKE_DATABASE_URL": url,
        "INTAKE_RATE_LIMIT_API_PER_MINUTE": "0",
        "PYTHONPATH": str(ROOT),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "intake", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                raise SystemExit(
                    f"the server exited: {server.stderr.read().decode()[-2000:]}"
                    if server.stderr
                    else "the server exited"
                )
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not answer /healthz within 30 s")
            time.sleep(0.1)  # polling for readiness, with the deadline above
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)


def time_case(client: httpx.Client, params: dict[str, str], requests: int) -> list[float]:
    for _ in range(20):  # warm up connections, plans and caches
        client.get("/api/v1/contacts", params=params).raise_for_status()
    timings = []
    for _ in range(requests):
        began = time.perf_counter()
        response = client.get("/api/v1/contacts", params=params)
        timings.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--dsn",
        default=os.environ.get("INTAKE_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres"),
    )
    args = parser.parse_args()

    with throwaway_database(args.dsn) as url:
        upgrade(url)
        db = Database(url)
        with db.unit_of_work() as session:
            new = create_tenant(session, name="bench")
            tenant_id, api_key = new.tenant.id, new.api_key
        db.dispose()
        began = time.perf_counter()
        load_contacts(url, tenant_id, args.contacts)
        print(f"loaded {args.contacts:,} contacts in {time.perf_counter() - began:.1f} s")

        slow = []
        with (
            serve(url) as base,
            httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
            ) as client,
        ):
            print(f"{'case':<22}{'median ms':>10}{'p95 ms':>10}{'total':>10}")
            for name, params in CASES.items():
                total = client.get("/api/v1/contacts", params=params).json()["pagination"]["total"]
                timings = time_case(client, params, args.requests)
                median = statistics.median(timings)
                p95 = statistics.quantiles(timings, n=20)[18]
                print(f"{name:<22}{median:>10.1f}{p95:>10.1f}{total:>10,}")
                if median > TARGET_MEDIAN_MS:
                    slow.append(name)
    if slow:
        print(f"over the {TARGET_MEDIAN_MS:.0f} ms median target: {', '.join(slow)}")
        return 1
    print(f"every median is under {TARGET_MEDIAN_MS:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
