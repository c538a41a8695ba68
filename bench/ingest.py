"""Ingestion throughput on real PostgreSQL and Redis, as ratios of references run alongside.

Scenarios: 20,000 messages accepted first, then two `intake worker` processes (solo pool)
started, timed from both being ready to the last message handled:
  (a) 1,000 tenants x 20 messages (10 senders each, two messages apiece)
  (b) 1 tenant x 20,000 messages (10,000 senders)
  (c) 1,000 tenants x 20 messages where 10% carry an attested link: per tenant 16 SMS from 8
      numbers, 2 Telegram users writing alone, then each of them writing with a phone: one
      shares an SMS sender's number (a merge), the other a number no one has (an added phone)
References: identity upserts as single-row INSERT ... ON CONFLICT from two connections; a
no-op Celery task (it INCRs a counter so completion shows) drained by two worker processes with
the same settings. Peak RSS is each worker's VmHWM.

    python bench/ingest.py [--pg-dsn "host=127.0.0.1 user=postgres"] [--redis redis://127.0.0.1:6379/14]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from channels.base import InboundMessage  # noqa: E402
from intake.settings import Settings  # noqa: E402
from models.db import Database  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from models.tenants import create_tenant  # noqa: E402
from worker.accept import accept  # noqa: E402
from worker.celery_app import QUEUE, make_celery  # noqa: E402
from worker.dispatch import Dispatcher  # noqa: E402
from worker.runner import run_worker  # noqa: E402

TOTAL = 20_000
NOOP_TASK = "bench.noop"
NOOP_COUNTER = "bench:noop:done"


def message(tenant_n: int, sender_n: int, k: int) -> InboundMessage:
    phone = f"+1415{tenant_n % 1000:03d}{sender_n:04d}"
    return InboundMessage(
        channel="sms",
        provider_message_id=f"SM{uuid.uuid4().hex}",
        received_at=datetime.now(UTC),
        phone=phone,
        text=f"message {k} about the flat",
    )


def telegram(tenant_n: int, user: int, phone: str | None = None) -> InboundMessage:
    return InboundMessage(
        channel="telegram",
        provider_message_id=f"tg{uuid.uuid4().hex}",
        received_at=datetime.now(UTC),
        sender_id=f"{tenant_n:04d}{user:02d}",
        phone=phone,
        display_name=f"T {tenant_n}/{user}",
        text="is it still available?",
    )


def linked_messages(tenant_n: int) -> list[InboundMessage]:
    """20 messages of one tenant, the last two attesting a Telegram id with a phone."""
    messages = [message(tenant_n, s, k) for s in range(8) for k in range(2)]
    messages += [telegram(tenant_n, 8), telegram(tenant_n, 9)]
    messages += [
        telegram(tenant_n, 8, phone=message(tenant_n, 0, 0).phone),
        telegram(tenant_n, 9, phone=message(tenant_n, 9, 0).phone),
    ]
    return messages


def make_tenants(db: Database, count: int) -> list[uuid.UUID]:
    with db.unit_of_work() as session:
        return [create_tenant(session, name=f"bench-{n}").tenant.id for n in range(count)]


def accept_all(
    db: Database, settings: Settings, plan: list[tuple[uuid.UUID, list[InboundMessage]]]
) -> float:
    dispatcher = Dispatcher(settings, make_celery(settings))
    started = time.perf_counter()
    for tenant_id, messages in plan:
        for start in range(0, len(messages), 20):
            accept(db, dispatcher, tenant_id=tenant_id, messages=messages[start : start + 20])
    return time.perf_counter() - started


def start_workers(
    env: dict[str, str], logdir: Path, args: list[str]
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    procs = []
    for n in range(2):
        log = logdir / f"worker-{n}-{time.monotonic_ns()}.log"
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            cwd=REPO,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append((proc, log))
    return procs


def wait_ready(procs: list[tuple[subprocess.Popen[bytes], Path]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(b" ready." in log.read_bytes() for _, log in procs):
        if time.monotonic() > deadline or any(p.poll() is not None for p, _ in procs):
            raise SystemExit(
                "bench: a worker did not become ready:\n"
                + "\n".join(log.read_text(errors="replace")[-2000:] for _, log in procs)
            )
        time.sleep(0.01)


def peak_rss_mib(procs: list[tuple[subprocess.Popen[bytes], Path]]) -> float:
    peak = 0
    for proc, _ in procs:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    return peak / 1024


def stop(procs: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    for proc, _ in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def pending_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM messages WHERE state = 'pending'").fetchone()
        return int(row[0]) if row else 0


def run_scenario(
    name: str,
    db: Database,
    settings: Settings,
    env: dict[str, str],
    dsn: str,
    plan: list[tuple[uuid.UUID, list[InboundMessage]]],
    logdir: Path,
) -> tuple[float, float]:
    accept_seconds = accept_all(db, settings, plan)
    total = sum(len(m) for _, m in plan)
    procs = start_workers(env, logdir, ["-m", "intake", "worker", "--concurrency", "1"])
    try:
        wait_ready(procs)
        started = time.perf_counter()
        while pending_count(dsn) > 0:
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        rss = peak_rss_mib(procs)
    finally:
        stop(procs)
    rate = total / elapsed
    print(
        f"{name}: accepted {total} in {accept_seconds:.1f}s ({total / accept_seconds:,.0f}/s); "
        f"ingested in {elapsed:.2f}s = {rate:,.0f} messages/s; worker peak RSS {rss:.0f} MiB"
    )
    return rate, rss


def _upserts(dsn: str, owners: list[tuple[str, str]], part: int, parts: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in range(part, TOTAL, parts):
            tenant, contact = owners[n % len(owners)]
            phone = f"+1415{n % 1000:03d}{(n // 1000) % 10:04d}"
            conn.execute(
                "INSERT INTO contact_identities (id, tenant_id, contact_id, kind, value, "
                "created_at) VALUES (%s, %s, %s, 'phone', %s, now()) "
                "ON CONFLICT (tenant_id, kind, value) WHERE retired_at IS NULL "
                "DO UPDATE SET created_at = excluded.created_at",
                (uuid.uuid4(), tenant, contact, phone),
            )


def _owners(dsn: str, tenant_ids: list[uuid.UUID]) -> list[tuple[str, str]]:
    """One contact a tenant, to hang the reference's identities on."""
    owners = [(str(t), str(uuid.uuid4())) for t in tenant_ids]
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO contacts (id, tenant_id, name, status, role, source, language, "
            "created_at, updated_at) VALUES (%s, %s, 'ref', 'prospect', 'prospect', 'sms', 'en', "
            "now(), now())",
            [(contact, tenant) for tenant, contact in owners],
        )
    return owners


def reference_upserts(db: Database, dsn: str) -> float:
    owners = _owners(dsn, make_tenants(db, 1000))
    workers = [multiprocessing.Process(target=_upserts, args=(dsn, owners, p, 2)) for p in range(2)]
    started = time.perf_counter()
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join()
    rate = TOTAL / (time.perf_counter() - started)
    print(
        f"reference, single-row identity INSERT ... ON CONFLICT, 2 connections: {rate:,.0f} rows/s"
    )
    return rate


def noop_app(settings: Settings) -> object:
    app = make_celery(settings)
    counter = redis.Redis.from_url(settings.redis_url)

    def noop() -> None:
        counter.incr(NOOP_COUNTER)

    app.task(name=NOOP_TASK, shared=False)(noop)
    return app


def reference_noop(settings: Settings, env: dict[str, str], logdir: Path) -> float:
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(NOOP_COUNTER, QUEUE)
    app = noop_app(settings)
    with app.producer_or_acquire() as producer:  # type: ignore[attr-defined]
        for _ in range(TOTAL):
            app.send_task(NOOP_TASK, producer=producer)  # type: ignore[attr-defined]
    procs = start_workers(env, logdir, [str(Path(__file__)), "--noop-worker"])
    try:
        wait_ready(procs)
        started = time.perf_counter()
        while int(client.get(NOOP_COUNTER) or 0) < TOTAL:
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        stop(procs)
    rate = TOTAL / elapsed
    print(f"reference, no-op Celery task, 2 solo workers: {rate:,.0f} tasks/s")
    return rate


def noop_worker() -> None:
    settings = Settings()
    import worker.runner as runner

    real = runner.make_celery
    runner.make_celery = lambda s: noop_app(s)  # the same worker argv and settings as intake's
    try:
        run_worker(settings, concurrency=1)
    finally:
        runner.make_celery = real


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg-dsn", default="host=127.0.0.1 port=5432 user=postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--noop-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.noop_worker:
        noop_worker()
        return

    name = f"intake_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg_dsn + " dbname=postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    params = psycopg.conninfo.conninfo_to_dict(args.pg_dsn)
    url = (
        f"postgresql+psycopg://{params.get('user', 'postgres')}@"
        f"{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}/{name}"
    )
    dsn = f"{args.pg_dsn} dbname={name}"
    redis.Redis.from_url(args.redis).flushdb()
    try:
        upgrade(url)
        db = Database(url)
        settings = Settings(
            database_url=url,
            broker_url=args.redis,
            redis_url=args.redis,
            reconcile_after_seconds=600,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_")}
        env.update(
            PYTHONPATH=str(REPO),
            INTAKE_DATABASE_URL=url,
            INTAKE_BROKER_URL=args.redis,
            INTAKE_REDIS_URL=args.redis,
            INTAKE_RECONCILE_AFTER_SECONDS="600",
        )
        logdir = Path(tempfile.mkdtemp(prefix="intake-bench-"))
        print(f"PostgreSQL database {name}, Redis {args.redis}, {os.cpu_count()} CPUs")

        tenants = make_tenants(db, 1000)
        plan_a = [
            (t, [message(n, s, k) for s in range(10) for k in range(2)])
            for n, t in enumerate(tenants)
        ]
        rate_a, rss_a = run_scenario(
            "(a) 1,000 tenants x 20", db, settings, env, dsn, plan_a, logdir
        )
        [one] = make_tenants(db, 1)
        plan_b = [
            (one, [message(s // 10_000, s % 10_000, k) for s in range(10_000) for k in range(2)])
        ]
        rate_b, rss_b = run_scenario(
            "(b) 1 tenant x 20,000", db, settings, env, dsn, plan_b, logdir
        )
        linked = make_tenants(db, 1000)
        plan_c = [(t, linked_messages(n)) for n, t in enumerate(linked)]
        rate_c, rss_c = run_scenario(
            "(c) 1,000 tenants x 20, 10% attested links", db, settings, env, dsn, plan_c, logdir
        )
        upserts = reference_upserts(db, dsn)
        noop = reference_noop(settings, env, logdir)
        print()
        for label, rate in (("(a)", rate_a), ("(b)", rate_b), ("(c)", rate_c)):
            print(
                f"{label} {rate:,.0f}/s = {rate / upserts:.2f} x single-row upserts, "
                f"{rate / noop:.2f} x no-op Celery tasks"
            )
        print(f"worker peak RSS: {max(rss_a, rss_b, rss_c):.0f} MiB")
        db.dispose()
    finally:
        with psycopg.connect(args.pg_dsn + " dbname=postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        redis.Redis.from_url(args.redis).flushdb()


if __name__ == "__main__":
    main()
