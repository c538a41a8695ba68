"""Fairness between tenants: one floods 20,000 webhooks while ten others send one a second.

Real processes on real services: one `intake serve` and `--workers` `intake worker` processes,
PostgreSQL in a throwaway database, Redis (a database number claimed as the tests claim theirs)
as broker, flags and locks. The flood is sent from `--flood-threads` threads as fast as the app
answers; each quiet tenant sends one signed SMS a second for as long as the flood runs. Reported:
the quiet tenants' webhook-to-handled latency (from the moment the request was sent to the
message's `handled_at`), p50 and p99, and the flood's own rate and drain time.
Target: quiet p99 under 1 s. Reported, not asserted.

    python bench/fairness.py [--pg-dsn "host=127.0.0.1 user=postgres"] [--flood 20000]
                             [--quiet 10] [--workers 2] [--flood-threads 8]
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import redis
from sqlalchemy import func, select

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from intake.signing import DEMO_SECRETS, SignedRequest  # noqa: E402
from models.db import Database  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from models.schema import Message  # noqa: E402
from tests.factories import make_tenant  # noqa: E402
from tests.support.processes import Processes, intake_env  # noqa: E402
from tests.support.traffic import twilio_sms  # noqa: E402

TARGET_P99_SECONDS = 1.0


@contextmanager
def throwaway_database(pg_dsn: str) -> Iterator[str]:
    name = f"intake_bench_{uuid.uuid4().hex[:10]}"
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    with psycopg.connect(pg_dsn + " dbname=postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield (
            f"postgresql+psycopg://{params.get('user', 'postgres')}@"
            f"{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}/{name}"
        )
    finally:
        with psycopg.connect(pg_dsn + " dbname=postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def claimed_redis(base: str) -> Iterator[str]:
    """A Redis database number no test run holds, claimed the way tests/conftest.py does."""
    token = uuid.uuid4().hex
    for number in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base}/{number}")
        if client.set("intake:test:claim", token, nx=True, ex=3600):
            client.flushdb()
            client.set("intake:test:claim", token, ex=3600)
            try:
                yield f"{base}/{number}"
            finally:
                client.flushdb()
            return
    raise SystemExit("every Redis database 1-15 is claimed")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def handled_at(db: Database, tenant_ids: list[uuid.UUID]) -> dict[str, datetime | None]:
    with db.sessions() as session:
        rows = session.execute(
            select(Message.provider_message_id, Message.handled_at).where(
                Message.tenant_id.in_(tenant_ids)
            )
        ).all()
    return {row[0]: row[1] for row in rows}


def pending(db: Database, tenant_id: uuid.UUID) -> int:
    with db.sessions() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.tenant_id == tenant_id, Message.state != "handled")
            )
            or 0
        )


def sid(request: SignedRequest) -> str:
    from urllib.parse import parse_qs

    return parse_qs(request.body.decode())["MessageSid"][0]


def run(args: argparse.Namespace) -> int:
    with (
        throwaway_database(args.pg_dsn) as url,
        claimed_redis(args.redis) as redis_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        upgrade(url)
        db = Database(url)
        processes = Processes(Path(tmp))
        try:
            env = intake_env(database_url=url, broker_url=redis_url, redis_url=redis_url)
            base = processes.serve(env)
            for n in range(args.workers):
                processes.worker(env, name=f"worker-{n}")
            hot = make_tenant(db, **DEMO_SECRETS)
            quiet = [make_tenant(db, **DEMO_SECRETS) for _ in range(args.quiet)]
            flood: queue.SimpleQueue[SignedRequest] = queue.SimpleQueue()
            for n in range(args.flood):
                flood.put(twilio_sms(hot.id, base_url=base, number=n))
            flood_done = threading.Event()
            sent_at: dict[str, float] = {}  # quiet message -> wall time it was sent
            errors: list[int] = []
            guard = threading.Lock()

            def flooder() -> None:
                with httpx.Client(base_url=base, timeout=60) as http:
                    while True:
                        try:
                            request = flood.get_nowait()
                        except queue.Empty:
                            return
                        status = http.post(
                            request.path, content=request.body, headers=request.headers
                        ).status_code
                        if status != 200:
                            with guard:
                                errors.append(status)

            def quiet_sender(tenant_id: uuid.UUID, offset: int) -> None:
                with httpx.Client(base_url=base, timeout=60) as http:
                    number = 1_000_000 * (offset + 1)
                    next_at = time.monotonic() + offset / max(1, args.quiet)
                    while not flood_done.is_set():
                        time.sleep(max(0.0, next_at - time.monotonic()))  # pacing, not syncing
                        next_at += 1.0
                        request = twilio_sms(tenant_id, base_url=base, number=number)
                        number += 1
                        started = time.time()
                        status = http.post(
                            request.path, content=request.body, headers=request.headers
                        ).status_code
                        with guard:
                            if status == 200:
                                sent_at[sid(request)] = started
                            else:
                                errors.append(status)

            started = time.monotonic()
            flooders = [threading.Thread(target=flooder) for _ in range(args.flood_threads)]
            senders = [
                threading.Thread(target=quiet_sender, args=(t.id, i)) for i, t in enumerate(quiet)
            ]
            for thread in [*flooders, *senders]:
                thread.start()
            for thread in flooders:
                thread.join()
            sent_seconds = time.monotonic() - started
            deadline = time.monotonic() + 600
            while pending(db, hot.id) and time.monotonic() < deadline:
                time.sleep(0.5)
            drained_seconds = time.monotonic() - started
            flood_done.set()
            for thread in senders:
                thread.join()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                handled = handled_at(db, [t.id for t in quiet])
                if all(handled.get(k) for k in sent_at):
                    break
                time.sleep(0.2)
            latencies = [
                when.replace(tzinfo=when.tzinfo or UTC).timestamp() - sent_at[key]
                for key, when in handled.items()
                if when is not None and key in sent_at
            ]
        finally:
            processes.kill_all()
            db.dispose()
    print(f"\nload average before the run: {LOAD_BEFORE}; {os.cpu_count()} cores")
    print(
        f"flood: {args.flood} webhooks sent in {sent_seconds:.1f}s "
        f"({args.flood / sent_seconds:.0f}/s), all handled {drained_seconds:.1f}s after the start;"
        f" {args.workers} worker(s); non-2xx answers: {len(errors)}"
    )
    if not latencies:
        print("no quiet message was handled")
        return 1
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(
        f"quiet tenants ({args.quiet}, one a second): {len(latencies)} messages, webhook-to-handled"
        f" p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms,"
        f" mean {statistics.mean(latencies) * 1000:.0f} ms"
        f" (target p99 < {TARGET_P99_SECONDS * 1000:.0f} ms:"
        f" {'met' if p99 < TARGET_P99_SECONDS else 'NOT met'})"
    )
    return 0


LOAD_BEFORE = ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg-dsn", default="host=127.0.0.1 port=5432 user=postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--flood", type=int, default=20_000)
    parser.add_argument("--quiet", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--flood-threads", type=int, default=8)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
