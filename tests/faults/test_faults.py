"""Fault tests with real processes: `intake serve` and `intake worker` subprocesses, a TCP proxy
that passes, refuses or stalls the traffic to Redis or PostgreSQL, and a private PostgreSQL
cluster that is stopped for real. For each fault: the answers and their times, then, after
recovery, exact counts: every 2xx message ingested once, nothing doubled.

Marked `fault`: slow, so outside the default run; `.ci/run` runs them as a step of their own.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from channels import email_raw
from intake.signing import DEMO_SECRETS, SignedRequest
from models.db import Database
from models.migrate import upgrade
from models.schema import Contact, Message
from tests.factories import make_tenant
from tests.support.private_pg import private_postgres
from tests.support.processes import Processes, intake_env
from tests.support.proxy import fault_proxy
from tests.support.traffic import twilio_sms
from tests.worker.test_end_to_end import wait_for

pytestmark = pytest.mark.fault

# Quick reconciling, so that wake-ups lost to a fault are re-sent within the test's patience.
FAST_RECONCILE = {"reconcile_after_seconds": "2", "reconcile_every_seconds": "1"}


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.kill_all()


def post(http: httpx.Client, request: SignedRequest) -> tuple[int, float]:
    started = time.monotonic()
    response = http.post(request.path, content=request.body, headers=request.headers)
    return response.status_code, time.monotonic() - started


def sid(request: SignedRequest) -> str:
    return parse_qs(request.body.decode())["MessageSid"][0]


def provider_ids(db: Database, tenant_id: uuid.UUID, *, state: str | None = None) -> list[str]:
    query = select(Message.provider_message_id).where(Message.tenant_id == tenant_id)
    if state is not None:
        query = query.where(Message.state == state)
    with db.sessions() as session:
        return list(session.scalars(query))


def live_contacts(db: Database, tenant_id: uuid.UUID) -> int:
    with db.sessions() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(Contact)
                .where(Contact.tenant_id == tenant_id, Contact.deleted_at.is_(None))
            )
            or 0
        )


def assert_ingested_exactly(db: Database, tenant_id: uuid.UUID, sent: list[str]) -> None:
    """Every message answered 2xx is in the inbox once and handled; each sender one contact."""
    stored = provider_ids(db, tenant_id)
    assert len(stored) == len(set(stored)) == len(sent)
    assert set(stored) == set(sent)
    assert sorted(provider_ids(db, tenant_id, state="handled")) == sorted(sent)
    assert live_contacts(db, tenant_id) == len(sent)  # twilio_sms: one sender a message


def redis_parts(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379, parts.path


def test_redis_stalled(
    postgres_db: Database,
    postgres_url: str,
    redis_url: str,
    processes: Processes,
    tmp_path: Path,
) -> None:
    """With Redis (broker and locks) accepting connections and then silent, webhooks still
    answer 200 within a second (their rows committed, the wake-ups left for later) and /healthz
    is a 503 within its bound; once Redis answers again, every message is ingested once."""
    host, port, number = redis_parts(redis_url)
    with fault_proxy(host, port) as proxy:
        proxied = f"redis://127.0.0.1:{proxy.port}{number}"
        env = intake_env(
            database_url=postgres_url,
            broker_url=proxied,
            redis_url=proxied,
            spool_dir=str(tmp_path / "spool"),
            **FAST_RECONCILE,
        )
        base = processes.serve(env)
        tenant = make_tenant(postgres_db, **DEMO_SECRETS)
        requests = [twilio_sms(tenant.id, base_url=base, number=n) for n in range(21)]
        with httpx.Client(base_url=base, timeout=30) as http:
            assert post(http, requests[0])[0] == 200
            proxy.stall()
            answers = [post(http, request) for request in requests[1:]]
            assert [status for status, _ in answers] == [200] * 20
            assert max(elapsed for _, elapsed in answers) < 1.0, answers
            started = time.monotonic()
            health = http.get("/healthz")
            assert health.status_code == 503
            assert time.monotonic() - started < 6
            assert "broker" in health.json()["detail"]
        # Committed before each answer, though no drain could be woken.
        assert sorted(provider_ids(postgres_db, tenant.id)) == sorted(map(sid, requests))
        proxy.pass_()
        processes.worker(env)
        wait_for(
            lambda: len(provider_ids(postgres_db, tenant.id, state="handled")) == len(requests),
            timeout=90,
            what=f"ingestion after Redis came back\n{processes.tail('worker')}",
        )
    assert_ingested_exactly(postgres_db, tenant.id, [sid(r) for r in requests])


def test_postgres_stalled(
    postgres_db: Database,
    postgres_url: str,
    redis_url: str,
    processes: Processes,
    tmp_path: Path,
) -> None:
    """With PostgreSQL accepting connections and then silent, webhooks are 200 from the spool
    (the first within a few seconds, the rest within one), /healthz is a 503 saying `spooling`
    and /metrics shows `intake_database_up 0` and the spool depth, and the Contacts API is a 503,
    each within its bound; once
    PostgreSQL answers again the spool empties and every message is ingested once."""
    target = make_url(postgres_url)
    with fault_proxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        proxied = target.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
        spool = tmp_path / "spool"
        env = intake_env(
            database_url=proxied,
            broker_url=redis_url,
            redis_url=redis_url,
            spool_dir=str(spool),
            **FAST_RECONCILE,
        )
        base = processes.serve(env)
        tenant = make_tenant(postgres_db, **DEMO_SECRETS)
        requests = [twilio_sms(tenant.id, base_url=base, number=n) for n in range(11)]
        with httpx.Client(base_url=base, timeout=30) as http:
            assert post(http, requests[0])[0] == 200  # the tenant's secrets are now known
            assert http.get("/api/v1/contacts", headers=tenant.auth).status_code == 200
            proxy.stall()
            first_status, first_time = post(http, requests[1])
            assert first_status == 200
            assert first_time < 5
            answers = [post(http, request) for request in requests[2:]]
            assert [status for status, _ in answers] == [200] * 9
            assert max(elapsed for _, elapsed in answers) < 1.0, answers
            started = time.monotonic()
            health = http.get("/healthz")
            assert (health.status_code, time.monotonic() - started < 6) == (503, True)
            assert "spooling" in health.json()["detail"]
            started = time.monotonic()
            metrics = http.get("/metrics")
            assert (metrics.status_code, time.monotonic() - started < 6) == (200, True)
            assert "intake_database_up 0.0" in metrics.text
            assert "intake_spool_depth 10.0" in metrics.text
            assert list(spool.glob("*.spool"))
            started = time.monotonic()
            api = http.get("/api/v1/contacts", headers=tenant.auth)
            assert (api.status_code, time.monotonic() - started < 13) == (503, True)

            proxy.pass_()
            wait_for(
                lambda: http.get("/healthz").json().get("status") == "ok",
                timeout=60,
                what=f"the spool to drain\n{processes.tail('app')}",
            )
        assert list(spool.glob("*.spool")) == []
        processes.worker(
            intake_env(
                database_url=postgres_url,
                broker_url=redis_url,
                redis_url=redis_url,
                **FAST_RECONCILE,
            )
        )
        wait_for(
            lambda: len(provider_ids(postgres_db, tenant.id, state="handled")) == len(requests),
            timeout=90,
            what=f"ingestion after PostgreSQL came back\n{processes.tail('worker')}",
        )
    assert_ingested_exactly(postgres_db, tenant.id, [sid(r) for r in requests])


def test_postgres_stopped_for_real_during_2000_webhooks(
    redis_url: str, processes: Processes, tmp_path: Path
) -> None:
    """A private PostgreSQL stopped with `-m immediate` and started again while 8 threads send
    2,000 signed webhooks: no 5xx (the spool could write), the spool empty afterwards, and every
    message ingested exactly once."""
    with private_postgres() as pg:
        upgrade(pg.url)
        db = Database(pg.url)
        tenant = make_tenant(db, **DEMO_SECRETS)
        spool = tmp_path / "spool"
        env = intake_env(
            database_url=pg.url,
            broker_url=redis_url,
            redis_url=redis_url,
            spool_dir=str(spool),
            **FAST_RECONCILE,
        )
        base = processes.serve(env)
        warm = twilio_sms(tenant.id, base_url=base, number=0)
        requests = [twilio_sms(tenant.id, base_url=base, number=n) for n in range(1, 2001)]
        with httpx.Client(base_url=base, timeout=30) as http:
            assert post(http, warm)[0] == 200
        todo: queue.SimpleQueue[SignedRequest] = queue.SimpleQueue()
        for request in requests:
            todo.put(request)
        answers: list[tuple[str, int]] = []
        guard = threading.Lock()

        def send() -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                while True:
                    try:
                        request = todo.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        status = post(http, request)[0]
                    except httpx.HTTPError:
                        status = 0
                    with guard:
                        answers.append((sid(request), status))

        def done() -> int:
            with guard:
                return len(answers)

        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        wait_for(lambda: done() >= 400, timeout=120, what="the first 400 answers")
        pg.stop("immediate")
        at_stop = done()
        wait_for(lambda: done() >= at_stop + 200, timeout=120, what="answers while it is down")
        pg.start()
        for thread in threads:
            thread.join(timeout=300)
        statuses = sorted({status for _, status in answers})
        assert statuses == [200], statuses
        assert len(answers) == len(requests)

        with httpx.Client(base_url=base, timeout=30) as http:
            wait_for(
                lambda: http.get("/healthz").json().get("status") == "ok",
                timeout=120,
                what=f"the spool to drain\n{processes.tail('app')}",
            )
        assert list(spool.glob("*.spool")) == []
        processes.worker(env)
        sent = [sid(warm), *(s for s, _ in answers)]
        wait_for(
            lambda: len(provider_ids(db, tenant.id, state="handled")) == len(sent),
            timeout=240,
            what=f"ingestion after the restart\n{processes.tail('worker')}",
        )
        assert_ingested_exactly(db, tenant.id, sent)
        processes.kill_all()
        db.dispose()


def big_html_email(size: int) -> bytes:
    paragraph = "<p>Hello <b>there</b>, is the flat on Elm Street still free?</p>\n"
    html = "<html><body>" + paragraph * (size // len(paragraph)) + "</body></html>"
    return (
        "From: Big Sender <big@example.com>\r\nTo: leasing@example.com\r\nSubject: A long one\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@example.com>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\n\r\n" + html
    ).encode()


def test_a_large_email_blocks_no_one(
    postgres_db: Database,
    postgres_url: str,
    redis_url: str,
    processes: Processes,
    tmp_path: Path,
) -> None:
    """While a 24 MiB HTML email is being parsed, another tenant's SMS and /healthz complete,
    before the email's own answer; each is then stored."""
    env = intake_env(
        database_url=postgres_url,
        broker_url=redis_url,
        redis_url=redis_url,
        spool_dir=str(tmp_path / "spool"),
    )
    base = processes.serve(env)
    emailer, texter = (
        make_tenant(postgres_db, **DEMO_SECRETS),
        make_tenant(postgres_db, **DEMO_SECRETS),
    )
    body = big_html_email(24 * 1024 * 1024)
    path = f"/webhooks/{emailer.id}/email/raw"
    sms = twilio_sms(texter.id, base_url=base, number=1)
    warm = twilio_sms(texter.id, base_url=base, number=2)
    url = urlsplit(base)
    signature = email_raw.sign(body, DEMO_SECRETS["email_webhook_secret"])
    with httpx.Client(base_url=base, timeout=60) as http:
        http.get("/healthz")  # connections, threads and the tenant's secrets warm
        assert post(http, warm)[0] == 200
        with socket.create_connection((url.hostname, url.port)) as big:
            big.sendall(
                (
                    f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                    "Content-Type: message/rfc822\r\n"
                    f"X-Intake-Signature: {signature}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode()
                + body
            )
            sent_at = time.monotonic()
            sms_status, sms_time = post(http, sms)
            started = time.monotonic()
            health_status = http.get("/healthz").status_code
            health_time = time.monotonic() - started
            others_done_at = time.monotonic()
            big.settimeout(60)
            answer = big.recv(4096)
            big_done_at = time.monotonic()
    print(  # the figures, for the report: SMS and /healthz latency beside the big email's
        f"\nlarge email: {big_done_at - sent_at:.2f}s after its body was sent; "
        f"SMS {sms_time * 1000:.0f} ms, /healthz {health_time * 1000:.0f} ms"
    )
    assert (sms_status, health_status) == (200, 200)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert others_done_at < big_done_at
    assert sorted(provider_ids(postgres_db, texter.id)) == sorted([sid(sms), sid(warm)])
    assert len(provider_ids(postgres_db, emailer.id)) == 1
