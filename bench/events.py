"""What the outbox costs and how fast deliveries go, on real PostgreSQL, in one process.

1. Ingest with events on and off: 10,000 SMS from 1,000 senders stored, then drained by the
   ingestion service (batches of 200, one transaction each); events written per second beside
   messages ingested per second. "Off" replaces the batch's one event call with a no-op.
   Off and on alternate `--repeat` times; the medians are compared.
2. Delivery throughput to a receiver on 127.0.0.1 (uvicorn, answers 200 at once and verifies
   nothing, so the sender is what is measured): 2,000 events to one endpoint (one round at a
   time: sequence order), and 4 endpoints of 4 tenants delivered from 4 threads.

    python bench/events.py [--pg-dsn "host=127.0.0.1 user=postgres"] [--messages 10000]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import uvicorn
from sqlalchemy import func, select

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import worker.ingestion as ingestion  # noqa: E402
from channels.base import InboundMessage  # noqa: E402
from models.db import Database  # noqa: E402
from models.events import NewEvent, record_events  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from models.schema import Event  # noqa: E402
from models.tenants import create_tenant  # noqa: E402
from models.webhook_endpoints import create_endpoint  # noqa: E402
from worker.accept import store_messages  # noqa: E402
from worker.deliveries import WebhookSender, run_delivery_round  # noqa: E402
from worker.locks import LocalTenantLocks  # noqa: E402


def fresh_database(dsn: str) -> tuple[Database, str]:
    name = f"intake_bench_events_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn + " dbname=postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    url = (
        f"postgresql+psycopg://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}"
        f":{params.get('port', 5432)}/{name}"
    )
    upgrade(url)
    return Database(url), name


def drop_database(dsn: str, name: str) -> None:
    with psycopg.connect(dsn + " dbname=postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_tenant(db: Database) -> uuid.UUID:
    with db.unit_of_work() as session:
        return create_tenant(session, name=f"bench-{uuid.uuid4().hex[:6]}").tenant.id


def ingest_run(db: Database, count: int, *, events: bool) -> tuple[float, int]:
    tenant_id = new_tenant(db)
    messages = [
        InboundMessage(
            channel="sms",
            provider_message_id=f"SM{uuid.uuid4().hex}",
            received_at=datetime.now(UTC),
            phone=f"+1415555{n % 1000:04d}",
            text="Is the flat still available?",
        )
        for n in range(count)
    ]
    for start in range(0, count, 500):
        with db.unit_of_work() as session:
            store_messages(session, tenant_id=tenant_id, messages=messages[start : start + 500])
    original = ingestion.record_ingestion_events
    if not events:
        ingestion.record_ingestion_events = lambda *a, **k: None  # type: ignore[assignment]
    try:
        started = time.perf_counter()
        result = ingestion.drain_tenant(
            db,
            LocalTenantLocks(wait_seconds=5),
            tenant_id=tenant_id,
            batch_size=200,
            max_attempts=5,
            budget_seconds=600,
        )
        elapsed = time.perf_counter() - started
    finally:
        ingestion.record_ingestion_events = original
    assert result.handled == count, result
    with db.sessions() as session:
        written = session.scalar(
            select(func.count()).select_from(Event).where(Event.tenant_id == tenant_id)
        )
    return elapsed, int(written or 0)


async def ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def start_receiver() -> tuple[uvicorn.Server, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(ok_app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    )
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise SystemExit("the receiver did not start")
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{port}/hooks"


def endpoint_with_events(db: Database, url: str, count: int) -> uuid.UUID:
    tenant_id = new_tenant(db)
    with db.unit_of_work() as session:
        endpoint = create_endpoint(session, tenant_id=tenant_id, url=url)
    for start in range(0, count, 500):
        with db.unit_of_work() as session:
            record_events(
                session,
                tenant_id=tenant_id,
                events=[
                    NewEvent("contact.created", {"contactId": str(uuid.uuid4())})
                    for _ in range(min(500, count - start))
                ],
            )
    return endpoint.id


def deliver_all(db: Database, sender: WebhookSender, endpoint_id: uuid.UUID, count: int) -> None:
    delivered = 0
    while delivered < count:
        result = run_delivery_round(db, sender, endpoint_id=endpoint_id, budget_seconds=600)
        delivered += result.succeeded
        if result.failed:
            raise SystemExit(f"a delivery failed: {result}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg-dsn", default="host=127.0.0.1 port=5432 user=postgres")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--deliveries", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    db, name = fresh_database(args.pg_dsn)
    try:
        ingest_run(db, 1000, events=True)  # warm up connections and caches
        rates: dict[bool, list[float]] = {False: [], True: []}
        # Interleaved, median of each: the database is shared, so its load drifts.
        for _ in range(args.repeat):
            for events in (False, True):
                elapsed, written = ingest_run(db, args.messages, events=events)
                rates[events].append(args.messages / elapsed)
                print(
                    f"ingest events={'on ' if events else 'off'}: {args.messages / elapsed:8.0f} "
                    f"messages/s, {written / elapsed:8.0f} events/s written ({written} events)"
                )
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"median: off {off:.0f} messages/s, on {on:.0f} messages/s ({on / off:.0%} of off)")
        server, url = start_receiver()
        sender = WebhookSender(timeout_seconds=10, allow_private=True)
        try:
            one = endpoint_with_events(db, url, args.deliveries)
            started = time.perf_counter()
            deliver_all(db, sender, one, args.deliveries)
            elapsed = time.perf_counter() - started
            print(f"deliveries, 1 endpoint:  {args.deliveries / elapsed:8.0f} /s")
            several = [endpoint_with_events(db, url, args.deliveries) for _ in range(4)]
            threads = [
                threading.Thread(target=deliver_all, args=(db, sender, e, args.deliveries))
                for e in several
            ]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            print(f"deliveries, 4 endpoints: {4 * args.deliveries / elapsed:8.0f} /s (4 threads)")
        finally:
            sender.close()
            server.should_exit = True
    finally:
        db.dispose()
        drop_database(args.pg_dsn, name)


if __name__ == "__main__":
    main()
