"""`intake events redeliver` and `intake tenant configure … events_include_body=1`."""

from __future__ import annotations

import uuid
from datetime import timedelta

from models.contacts import create_contact
from models.db import Database
from models.schema import Tenant, WebhookDelivery, utcnow
from models.webhook_endpoints import AttemptResult, create_endpoint, fan_out, record_attempt
from tests.cli.test_cli import assert_one_line_error, intake
from tests.factories import make_tenant


def _failed_delivery(db: Database) -> uuid.UUID:
    tenant = make_tenant(db)
    with db.unit_of_work() as session:
        endpoint = create_endpoint(session, tenant_id=tenant.id, url="http://127.0.0.1:9/h")
        create_contact(session, tenant_id=tenant.id, region="US", name="A", email="a@example.com")
    with db.unit_of_work() as session:
        fan_out(session, endpoint_id=endpoint.id)
    with db.unit_of_work() as session:
        delivery = session.query(WebhookDelivery).filter_by(endpoint_id=endpoint.id).one()
        delivery.state = "failed"
        delivery.attempts = 8
        record_attempt(
            session,
            delivery_id=delivery.id,
            result=AttemptResult("connection_error", 3, error="refused"),
            now=utcnow() - timedelta(hours=1),
        )
        return delivery.id


def test_redeliver_puts_a_delivery_back_to_pending(db: Database) -> None:
    """The command resets the delivery's schedule so the pump sends it again now."""
    delivery_id = _failed_delivery(db)
    result = intake("events", "redeliver", str(delivery_id), database_url=db.url)
    assert result.returncode == 0, result.stderr
    assert "1 delivery" in result.stdout
    with db.sessions() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        assert (delivery.state, delivery.attempts) == ("pending", 0)
        assert delivery.next_attempt_at <= utcnow()


def test_redeliver_unknown_id_is_a_one_line_error(db: Database) -> None:
    """An id that names no delivery changes nothing and exits non-zero."""
    result = intake("events", "redeliver", str(uuid.uuid4()), database_url=db.url)
    assert_one_line_error(result, "no delivery")
    assert_one_line_error(intake("events", "redeliver", "nope", database_url=db.url), "not a")


def test_configure_events_include_body(db: Database) -> None:
    """`events_include_body=1` is stored on the tenant; other values are refused."""
    tenant = make_tenant(db)
    ok = intake("tenant", "configure", str(tenant.id), "events_include_body=1", database_url=db.url)
    assert ok.returncode == 0, ok.stderr
    with db.sessions() as session:
        stored = session.get(Tenant, tenant.id)
        assert stored is not None
        assert stored.events_include_body is True
    bad = intake(
        "tenant", "configure", str(tenant.id), "events_include_body=yes", database_url=db.url
    )
    assert_one_line_error(bad, "events_include_body")
