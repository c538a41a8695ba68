"""Delivery rounds against a real receiver on 127.0.0.1: signatures, retries, order, disable.

The round functions are called directly (no Celery); the end-to-end tests run real workers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from models import contacts
from models.db import Database
from models.schema import WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow
from models.webhook_endpoints import create_endpoint, rotate_secret
from tests.events.helpers import types_of
from tests.events.receiver import Answer, Receiver, ReceiverServer, free_port, wait_until
from tests.factories import make_tenant
from worker.deliveries import WebhookSender, pump_once, run_delivery_round


@pytest.fixture
def receiver() -> Iterator[ReceiverServer]:
    server = ReceiverServer(Receiver()).start()
    yield server
    server.stop()


@pytest.fixture
def sender() -> Iterator[WebhookSender]:
    client = WebhookSender(timeout_seconds=2, allow_private=True)
    yield client
    client.close()


def _endpoint(
    db: Database, tenant_id: uuid.UUID, url: str, event_types: Sequence[str] = ()
) -> WebhookEndpoint:
    with db.unit_of_work() as session:
        return create_endpoint(session, tenant_id=tenant_id, url=url, event_types=event_types)


def _contacts(db: Database, tenant_id: uuid.UUID, count: int) -> None:
    for _ in range(count):
        with db.unit_of_work() as session:
            contacts.create_contact(
                session,
                tenant_id=tenant_id,
                region="US",
                name="Jane",
                email=f"{uuid.uuid4().hex[:10]}@example.com",
            )


def _deliveries(db: Database, endpoint_id: uuid.UUID) -> list[WebhookDelivery]:
    with db.sessions() as session:
        return list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.endpoint_id == endpoint_id)
                .order_by(WebhookDelivery.sequence)
            )
        )


def _drive(
    db: Database,
    sender: WebhookSender,
    endpoint_id: uuid.UUID,
    *,
    until: Callable[[], bool],
    timeout: float,
) -> None:
    """Run rounds (as the pump would) until `until()` holds."""

    def step() -> bool:
        run_delivery_round(db, sender, endpoint_id=endpoint_id, backoff_scale=0.0001)
        return until()

    wait_until(step, timeout=timeout, what="deliveries")


def test_every_event_is_delivered_signed_and_in_order(
    db: Database, receiver: ReceiverServer, sender: WebhookSender
) -> None:
    """Five events reach the receiver in sequence order, each verified by standardwebhooks."""
    tenant = make_tenant(db)
    endpoint = _endpoint(db, tenant.id, receiver.url)
    receiver.receiver.secrets = [endpoint.secret]
    _contacts(db, tenant.id, 5)
    result = run_delivery_round(db, sender, endpoint_id=endpoint.id)
    assert result.succeeded == 5
    got = receiver.receiver.received
    assert [r.body["sequence"] for r in got] == [1, 2, 3, 4, 5]
    assert all(r.verified_by == [0] for r in got)
    assert got[0].body["type"] == "contact.created"
    assert got[0].headers["webhook-id"] == got[0].body["id"]
    assert {d.state for d in _deliveries(db, endpoint.id)} == {"succeeded"}


def test_event_types_filter_what_an_endpoint_gets(
    db: Database, receiver: ReceiverServer, sender: WebhookSender
) -> None:
    """An endpoint for contact.deleted only receives no contact.created."""
    tenant = make_tenant(db)
    endpoint = _endpoint(db, tenant.id, receiver.url, event_types=["contact.deleted"])
    _contacts(db, tenant.id, 2)
    run_delivery_round(db, sender, endpoint_id=endpoint.id)
    assert receiver.receiver.received == []
    assert _deliveries(db, endpoint.id) == []


@pytest.mark.parametrize("status", [500, 503, 404, 410])
def test_failed_answer_is_retried_until_it_succeeds(
    db: Database, receiver: ReceiverServer, sender: WebhookSender, status: int
) -> None:
    """5xx and (as Svix does) 4xx are retried; every attempt is kept with status and latency."""
    tenant = make_tenant(db)
    endpoint = _endpoint(db, tenant.id, receiver.url)
    receiver.receiver.script.extend([Answer(status), Answer(status)])
    _contacts(db, tenant.id, 1)
    first = run_delivery_round(db, sender, endpoint_id=endpoint.id, backoff_scale=0.0001)
    assert first.failed == 1
    (delivery,) = _deliveries(db, endpoint.id)
    assert delivery.state == "pending"
    assert delivery.last_status == status
    _drive(
        db,
        sender,
        endpoint.id,
        until=lambda: _deliveries(db, endpoint.id)[0].state == "succeeded",
        timeout=10,
    )
    with db.sessions() as session:
        attempts = list(
            session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery.id)
                .order_by(WebhookAttempt.attempted_at)
            )
        )
    assert [a.status_code for a in attempts] == [status, status, 200]
    assert all(a.latency_ms >= 0 for a in attempts)
    assert len(set(receiver.receiver.ids())) == 1


def test_429_retry_after_is_honoured(
    db: Database, receiver: ReceiverServer, sender: WebhookSender
) -> None:
    """`Retry-After: 120` puts the next attempt at least two minutes out, not 5 s."""
    tenant = make_tenant(db)
    endpoint = _endpoint(db, tenant.id, receiver.url)
    receiver.receiver.script.append(Answer(429, headers=(("retry-after", "120"),)))
    _contacts(db, tenant.id, 1)
    before = utcnow()
    run_delivery_round(db, sender, endpoint_id=endpoint.id)
    (delivery,) = _deliveries(db, endpoint.id)
    assert delivery.last_status == 429
    assert delivery.next_attempt_at >= before + timedelta(seconds=119)


def test_failed_delivery_holds_back_later_ones_to_keep_order(
    db: Database, receiver: ReceiverServer, sender: WebhookSender
) -> None:
    """After a 500 on event 1, events 2-3 wait; once 1 succeeds they follow in order."""
    tenant = make_tenant(db)
    endpoint = _endpoint(db, tenant.id, receiver.url)
    receiver.receiver.script.append(Answer(500))
    _contacts(db, tenant.id, 3)
    result = run_delivery_round(db, sender, endpoint_id=endpoint.id, backoff_scale=1)
    assert result.failed == 1
    assert result.wake_at is None
    again = run_delivery_round(db, sender, endpoint_id=endpoint.id)
    assert again.succeeded == 0
    assert again.wake_at is not None  # the first delivery's backoff
    with db.unit_of_work() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint.id)
            .values(next_attempt_at=utcnow())
        )
    run_delivery_round(db, sender, endpoint_id=endpoint.id)
    ok = [r.body["sequence"] for r in receiver.receiver.received if r.status == 200]
    assert ok == [1, 2, 3]


def test_timeout_and_connection_refused_are_failed_attempts(
    db: Database, receiver: ReceiverServer
) -> None:
    """A receiver slower than the timeout, and a port nobody listens on, are both retried."""
    tenant = make_tenant(db)
    slow = _endpoint(db, tenant.id, receiver.url)
    dead = _endpoint(db, tenant.id, f"http://127.0.0.1:{free_port()}/hooks")
    receiver.receiver.default = Answer(200, delay=1.5)
    _contacts(db, tenant.id, 1)
    quick = WebhookSender(timeout_seconds=0.3, allow_private=True)
    try:
        run_delivery_round(db, quick, endpoint_id=slow.id)
        run_delivery_round(db, quick, endpoint_id=dead.id)
    finally:
        quick.close()
    with db.sessions() as session:
        outcomes = {
            d.endpoint_id: d.last_error
            for d in session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant.id)
            )
        }
        kinds = {
            a.outcome
            for a in session.scalars(
                select(WebhookAttempt).where(WebhookAttempt.tenant_id == tenant.id)
            )
        }
    assert kinds == {"timeout", "connection_error"}
    assert outcomes[slow.id] is not None
    assert outcomes[dead.id] is not None


def test_rotation_signs_with_both_secrets_during_the_overlap(
    db: Database, receiver: ReceiverServer, sender: WebhookSender
) -> None:
    """After rotate-secret, `webhook-signature` verifies with the old and the new secret."""
    tenant = make_tenant(db)
    endpoint = _endpoint(db, tenant.id, receiver.url)
    old = endpoint.secret
    with db.unit_of_work() as session:
        new = rotate_secret(session, tenant_id=tenant.id, endpoint_id=endpoint.id).secret
    receiver.receiver.secrets = [old, new]
    _contacts(db, tenant.id, 1)
    run_delivery_round(db, sender, endpoint_id=endpoint.id)
    (got,) = receiver.receiver.received
    assert got.verified_by == [0, 1]
    assert len(got.headers["webhook-signature"].split(" ")) == 2


def test_after_the_overlap_only_the_new_secret_signs(
    db: Database, receiver: ReceiverServer, sender: WebhookSender
) -> None:
    """A rotation's old secret stops signing when its overlap ends."""
    tenant = make_tenant(db)
    endpoint = _endpoint(db, tenant.id, receiver.url)
    old = endpoint.secret
    with db.unit_of_work() as session:
        new = rotate_secret(
            session, tenant_id=tenant.id, endpoint_id=endpoint.id, overlap=timedelta(0)
        ).secret
    receiver.receiver.secrets = [old, new]
    _contacts(db, tenant.id, 1)
    run_delivery_round(db, sender, endpoint_id=endpoint.id)
    assert receiver.receiver.received[0].verified_by == [1]


def test_endpoint_failing_for_five_days_is_disabled_with_an_event(
    db: Database, sender: WebhookSender
) -> None:
    """A failure after five days of failures disables it and writes webhook_endpoint.disabled."""
    tenant = make_tenant(db)
    endpoint = _endpoint(db, tenant.id, f"http://127.0.0.1:{free_port()}/hooks")
    _contacts(db, tenant.id, 1)
    with db.unit_of_work() as session:
        session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint.id)
            .values(failing_since=utcnow() - timedelta(days=5, minutes=1))
        )
    run_delivery_round(db, sender, endpoint_id=endpoint.id)
    with db.sessions() as session:
        after = session.get(WebhookEndpoint, endpoint.id)
        assert after is not None
        assert after.enabled is False
        assert after.disabled_reason
    assert types_of(db, tenant.id)[-1] == "webhook_endpoint.disabled"


def test_delivery_is_refused_at_connect_time_when_dns_turns_private(db: Database) -> None:
    """A name checked public at registration that resolves to 127.0.0.1 at send: refused."""
    tenant = make_tenant(db)
    endpoint = _endpoint(db, tenant.id, "https://hooks.example.com/in")
    _contacts(db, tenant.id, 1)
    rebinding = WebhookSender(
        timeout_seconds=1, allow_private=False, resolve=lambda host, port: ["127.0.0.1"]
    )
    try:
        run_delivery_round(db, rebinding, endpoint_id=endpoint.id)
    finally:
        rebinding.close()
    (delivery,) = _deliveries(db, endpoint.id)
    assert delivery.state == "pending"
    assert delivery.last_error is not None
    assert "127.0.0.1" in delivery.last_error


def test_pump_leases_each_endpoint_once(db: Database) -> None:
    """Two pumps in a row send one round for an endpoint with work: the lease is held."""
    tenant = make_tenant(db)
    endpoint = _endpoint(db, tenant.id, "http://127.0.0.1:9/hooks")
    _contacts(db, tenant.id, 1)

    class Sent:
        def __init__(self) -> None:
            self.args: list[list[str]] = []

        def send_task(self, name: str, *, args: list[str], queue: str) -> None:
            self.args.append(args)

    app = Sent()
    pump_once(db, app)
    pump_once(db, app)
    assert [str(endpoint.id)] in app.args
    assert app.args.count([str(endpoint.id)]) == 1


def test_sender_connects_to_the_checked_address_with_the_name_as_host(
    db: Database, receiver: ReceiverServer
) -> None:
    """A name only our resolver knows reaches the receiver: the connect uses the checked
    address (no second lookup), and `Host` still names the endpoint's host."""
    tenant = make_tenant(db)
    endpoint = _endpoint(db, tenant.id, f"http://receiver.invalid:{receiver.port}/hooks")
    _contacts(db, tenant.id, 1)
    pinned = WebhookSender(
        timeout_seconds=2, allow_private=True, resolve=lambda host, port: ["127.0.0.1"]
    )
    try:
        result = run_delivery_round(db, pinned, endpoint_id=endpoint.id)
    finally:
        pinned.close()
    assert result.succeeded == 1
    assert receiver.receiver.received[0].headers["host"] == f"receiver.invalid:{receiver.port}"


def test_redirect_is_not_followed(
    db: Database, receiver: ReceiverServer, sender: WebhookSender
) -> None:
    """A 302 to elsewhere is a failed attempt, and nothing is sent to the Location."""
    tenant = make_tenant(db)
    endpoint = _endpoint(db, tenant.id, receiver.url)
    receiver.receiver.script.append(
        Answer(302, headers=(("location", "http://169.254.169.254/latest"),))
    )
    _contacts(db, tenant.id, 1)
    result = run_delivery_round(db, sender, endpoint_id=endpoint.id)
    assert result.failed == 1
    assert len(receiver.receiver.received) == 1
    assert _deliveries(db, endpoint.id)[0].last_status == 302
