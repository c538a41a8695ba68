"""Group commit: many requests' accepts in one transaction, each with its own outcome."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future

import pytest
import redis
from sqlalchemy.exc import IntegrityError

from intake.settings import Settings
from models.db import Database
from tests.factories import make_tenant
from tests.worker.helpers import inbound, message_rows
from worker.accept import (
    AcceptRequest,
    AcceptResult,
    AcceptUnavailableError,
    NonceReplayedError,
    accept,
    accept_batch,
)
from worker.accept_batcher import AcceptBatcher
from worker.celery_app import QUEUE, make_celery
from worker.dispatch import Dispatcher, scheduled_key


@pytest.fixture
def redis_dispatcher(redis_url: str, redis_client: redis.Redis) -> Dispatcher:
    redis_client.delete(QUEUE)
    settings = Settings(broker_url=redis_url, redis_url=redis_url)
    return Dispatcher(settings, make_celery(settings))


def _down() -> Database:
    return Database(
        "postgresql+psycopg://postgres@127.0.0.1:1/nowhere", connect_args={"connect_timeout": 2}
    )


def test_each_request_of_a_batch_gets_its_own_result(
    db: Database, redis_dispatcher: Dispatcher, redis_client: redis.Redis
) -> None:
    """Two tenants' requests in one batch: each counts its own rows; each tenant is woken once."""
    first, second = make_tenant(db), make_tenant(db)
    requests = [
        AcceptRequest(first.id, [inbound("sms"), inbound("sms")], request_id="a"),
        AcceptRequest(second.id, [inbound("telegram")], request_id="b"),
        AcceptRequest(first.id, [inbound("sms")], request_id="c"),
    ]
    outcomes = accept_batch(db, redis_dispatcher, requests=requests)
    assert all(isinstance(o, AcceptResult) for o in outcomes)
    assert [(o.new, o.duplicates) for o in outcomes] == [(2, 0), (1, 0), (1, 0)]  # type: ignore[union-attr]
    rows = message_rows(db, first.id) + message_rows(db, second.id)
    by_id = {r.id: r.request_id for r in rows}
    for outcome, request in zip(outcomes, requests, strict=True):
        assert {by_id[i] for i in outcome.message_ids} == {request.request_id}  # type: ignore[union-attr]
    assert len(redis_client.lrange(QUEUE, 0, -1)) == 2
    assert redis_client.exists(scheduled_key(first.id), scheduled_key(second.id)) == 2


def test_replayed_nonce_in_a_batch_fails_only_its_request(
    db: Database, redis_dispatcher: Dispatcher
) -> None:
    """A token used before or earlier in the batch refuses only its request: it stores nothing."""
    tenant = make_tenant(db)
    accept(db, redis_dispatcher, tenant_id=tenant.id, messages=[], nonce=("mailgun", "old"))
    kept = [inbound("email", email=f"k{i}@example.com") for i in range(2)]
    requests = [
        AcceptRequest(tenant.id, [kept[0]], nonce=("mailgun", "new")),
        AcceptRequest(tenant.id, [inbound("email")], nonce=("mailgun", "old")),
        AcceptRequest(tenant.id, [inbound("email")], nonce=("mailgun", "new")),
        AcceptRequest(tenant.id, [kept[1]]),
    ]
    outcomes = accept_batch(db, redis_dispatcher, requests=requests)
    assert [type(o) for o in outcomes] == [
        AcceptResult,
        NonceReplayedError,
        NonceReplayedError,
        AcceptResult,
    ]
    stored = {r.provider_message_id for r in message_rows(db, tenant.id)}
    assert stored == {m.provider_message_id for m in kept}


def test_duplicates_within_and_across_batches_are_counted(
    db: Database, redis_dispatcher: Dispatcher
) -> None:
    """A message twice in a batch is stored once, for its first request; later copies are dups."""
    tenant = make_tenant(db)
    shared, other = inbound("sms"), inbound("sms")
    outcomes = accept_batch(
        db,
        redis_dispatcher,
        requests=[
            AcceptRequest(tenant.id, [shared]),
            AcceptRequest(tenant.id, [shared, other, other]),
        ],
    )
    again = accept_batch(db, redis_dispatcher, requests=[AcceptRequest(tenant.id, [shared, other])])
    counts = [(o.new, o.duplicates) for o in outcomes + again]  # type: ignore[union-attr]
    assert counts == [(1, 0), (1, 2), (0, 2)]
    assert len(message_rows(db, tenant.id)) == 2


def test_unreachable_database_fails_the_whole_batch(redis_dispatcher: Dispatcher) -> None:
    """With the database down, every request of the batch gets AcceptUnavailableError."""
    down = _down()
    try:
        requests = [AcceptRequest(uuid.uuid4(), [inbound("sms")]) for _ in range(3)]
        outcomes = accept_batch(down, redis_dispatcher, requests=requests)
    finally:
        down.dispose()
    assert [type(o) for o in outcomes] == [AcceptUnavailableError] * 3


def test_a_bad_request_does_not_fail_the_others(db: Database, redis_dispatcher: Dispatcher) -> None:
    """An unknown tenant breaks the shared insert; the batch retries alone and the rest commit."""
    tenant = make_tenant(db)
    good = [inbound("sms"), inbound("sms")]
    outcomes = accept_batch(
        db,
        redis_dispatcher,
        requests=[
            AcceptRequest(tenant.id, [good[0]]),
            AcceptRequest(uuid.uuid4(), [inbound("sms")]),
            AcceptRequest(tenant.id, [good[1]]),
        ],
    )
    assert [type(o) for o in outcomes] == [AcceptResult, IntegrityError, AcceptResult]
    assert {r.provider_message_id for r in message_rows(db, tenant.id)} == {
        m.provider_message_id for m in good
    }


def test_concurrent_submits_are_grouped_and_nothing_is_lost(
    db: Database, redis_dispatcher: Dispatcher
) -> None:
    """Threads submitting at once share batches; every result is right and every row stored."""
    tenant = make_tenant(db)
    batcher = AcceptBatcher(db, redis_dispatcher)
    threads, per_thread = 8, 25
    start = threading.Barrier(threads)
    futures: list[tuple[int, Future[AcceptResult]]] = []
    guard = threading.Lock()

    def submit_all(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            messages = [inbound("sms") for _ in range(1 + (t + i) % 3)]
            future = batcher.submit(tenant_id=tenant.id, messages=messages, request_id=f"{t}-{i}")
            with guard:
                futures.append((len(messages), future))

    pool = [threading.Thread(target=submit_all, args=(t,)) for t in range(threads)]
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(30)
        results = [(size, future.result(timeout=30)) for size, future in futures]
    finally:
        batcher.close()
    assert all(r.new == size and r.duplicates == 0 for size, r in results)
    ids = {i for _, r in results for i in r.message_ids}
    assert {r.id for r in message_rows(db, tenant.id)} == ids
    assert len(ids) == sum(size for size, _ in results)
    assert batcher.batches < len(results)  # some requests did share a transaction


def test_batcher_hands_each_waiting_request_its_error(redis_dispatcher: Dispatcher) -> None:
    """A waiting request sees AcceptUnavailableError when its batch cannot be committed."""
    down = _down()
    batcher = AcceptBatcher(down, redis_dispatcher)
    try:
        futures = [
            batcher.submit(tenant_id=uuid.uuid4(), messages=[inbound("sms")]) for _ in range(3)
        ]
        for future in futures:
            with pytest.raises(AcceptUnavailableError):
                future.result(timeout=30)
    finally:
        batcher.close()
        down.dispose()


def test_batcher_thread_stops_on_close_and_when_idle(
    db: Database, redis_dispatcher: Dispatcher
) -> None:
    """close() ends the thread; an idle batcher ends its own; a later submit starts one again."""
    tenant = make_tenant(db)
    batcher = AcceptBatcher(db, redis_dispatcher, idle_seconds=0.05)
    batcher.submit(tenant_id=tenant.id, messages=[inbound("sms")]).result(timeout=30)
    batcher.close()
    assert not batcher.running
    again = batcher.submit(tenant_id=tenant.id, messages=[inbound("sms")])
    assert again.result(timeout=30).new == 1
    deadline = time.monotonic() + 10
    while batcher.running and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the condition, not waiting for it to happen
    assert not batcher.running
    assert len(message_rows(db, tenant.id)) == 2


class _StalledDispatcher(Dispatcher):
    """Holds the batching thread in its wake-up until released, so requests queue behind it."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, make_celery(settings))
        self.entered, self.release = threading.Event(), threading.Event()

    def dispatch(self, tenant_id: uuid.UUID) -> bool:
        self.entered.set()
        self.release.wait(30)
        return super().dispatch(tenant_id)


def test_a_request_cancelled_while_queued_is_skipped_and_the_batcher_carries_on(
    db: Database, redis_url: str
) -> None:
    """A caller that gave up before its batch ran stores nothing; later requests still succeed."""
    tenant = make_tenant(db)
    dispatcher = _StalledDispatcher(Settings(broker_url=redis_url, redis_url=redis_url))
    batcher = AcceptBatcher(db, dispatcher)
    try:
        first = batcher.submit(tenant_id=tenant.id, messages=[inbound("sms")])
        assert dispatcher.entered.wait(30)
        given_up = batcher.submit(tenant_id=tenant.id, messages=[inbound("sms")])
        assert given_up.cancel()
        dispatcher.release.set()
        later = batcher.submit(tenant_id=tenant.id, messages=[inbound("sms")])
        results = [first.result(timeout=30), later.result(timeout=30)]
    finally:
        dispatcher.release.set()
        batcher.close()
    assert {r.id for r in message_rows(db, tenant.id)} == {
        i for r in results for i in r.message_ids
    }
    assert len(message_rows(db, tenant.id)) == 2


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose kernel completes the TCP handshake but whose server never says a word."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # never accepted: connects succeed from the backlog, replies never come
        yield server.getsockname()[1]


def test_a_silent_broker_delays_no_answer(db: Database, silent_port: int) -> None:
    """With Redis accepting connections and never answering, an accept still returns within a
    second, its rows committed; the wake-up waits on the waker's thread and then fails there
    (bounded by the socket timeouts), left to the reconciler."""
    silent = f"redis://127.0.0.1:{silent_port}/0"
    settings = Settings(broker_url=silent, redis_url=silent)
    batcher = AcceptBatcher(db, Dispatcher(settings, make_celery(settings)))
    tenant = make_tenant(db)
    try:
        started = time.monotonic()
        future = batcher.submit(
            tenant_id=tenant.id, messages=[inbound("sms", phone="+14155550142")]
        )
        assert future.result(timeout=5).new == 1
        assert time.monotonic() - started < 1.0
        assert [row.state for row in message_rows(db, tenant.id)] == ["pending"]
        assert batcher.waker.wait_idle(30)  # bounded: the send gave up by itself
    finally:
        batcher.close(timeout=30)
