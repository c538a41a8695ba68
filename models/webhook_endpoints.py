"""Webhook endpoints, their deliveries and every attempt: the outbound side of the event feed.

An endpoint's deliveries are made from the feed by a fan-out that follows the endpoint's own
cursor (`cursor`: events up to it have their deliveries), so writing an event costs nothing
per endpoint. One delivery round at a time runs per endpoint, under a lease on its row, and
takes its pending deliveries lowest sequence first: that keeps them in event order where the
endpoint keeps up. Functions flush but never commit.
"""

from __future__ import annotations

import base64
import random
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session

from models.contacts import Page
from models.events import EVENT_TYPES, UnknownEventTypeError, last_sequence, record_event
from models.schema import (
    Event,
    EventCounter,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)

# Standard Webhooks: the base64 key behind a recognisable prefix; a prefix, not a secret.
SECRET_PREFIX = "whsec_"  # noqa: S105
SECRET_BYTES = 24
# Svix's schedule: after the first attempt fails, these waits (about 27 hours in all); the
# attempt after the last wait is the final one. https://docs.svix.com/retries
RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
MAX_RETRY_AFTER = timedelta(hours=24)
DISABLE_AFTER = timedelta(days=5)
FAN_OUT_BATCH = 500
UPDATABLE_FIELDS = frozenset({"url", "event_types", "enabled"})


class WebhookEndpointNotFoundError(LookupError):
    def __init__(self, endpoint_id: uuid.UUID | str) -> None:
        super().__init__(f"no webhook endpoint {endpoint_id}")
        self.endpoint_id = endpoint_id


class DeliveryNotFoundError(LookupError):
    def __init__(self, delivery_id: uuid.UUID | str) -> None:
        super().__init__(f"no delivery {delivery_id}")
        self.delivery_id = delivery_id


@dataclass(frozen=True)
class AttemptResult:
    """What one HTTP request of a delivery came to, as the sender saw it."""

    outcome: str  # succeeded, http_error, timeout, connection_error, refused_address
    latency_ms: int
    status_code: int | None = None
    error: str | None = None
    retry_after: timedelta | None = None

    @property
    def succeeded(self) -> bool:
        return self.outcome == "succeeded"


@dataclass(frozen=True)
class DueDelivery:
    """A delivery to attempt now, with what the sender needs, read in one short transaction."""

    delivery_id: uuid.UUID
    endpoint_id: uuid.UUID
    event: Event
    url: str
    secrets: tuple[str, ...]


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def endpoints_of(tenant_id: uuid.UUID) -> Select[WebhookEndpoint]:
    return select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)


def deliveries_of(tenant_id: uuid.UUID) -> Select[WebhookDelivery]:
    return select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id)


def _check_types(event_types: Sequence[str]) -> list[str]:
    for event_type in event_types:
        if event_type not in EVENT_TYPES:
            raise UnknownEventTypeError(event_type)
    return sorted(set(event_types))


def create_endpoint(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    url: str,
    event_types: Sequence[str] = (),
    enabled: bool = True,
    now: datetime | None = None,
) -> WebhookEndpoint:
    """A new endpoint that receives the events written from now on (its URL checked by the
    caller). Its `secret` is readable on the returned object; show it once."""
    now = now or utcnow()
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        url=url,
        event_types=_check_types(event_types),
        enabled=enabled,
        secret=new_secret(),
        cursor=last_sequence(session, tenant_id=tenant_id),
        created_at=now,
        updated_at=now,
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def list_endpoints(session: Session, *, tenant_id: uuid.UUID) -> list[WebhookEndpoint]:
    return list(
        session.scalars(
            endpoints_of(tenant_id).order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        )
    )


def get_endpoint(
    session: Session, *, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, for_update: bool = False
) -> WebhookEndpoint:
    statement = endpoints_of(tenant_id).where(WebhookEndpoint.id == endpoint_id)
    if for_update:
        statement = statement.with_for_update()
    endpoint = session.scalars(statement).one_or_none()
    if endpoint is None:
        raise WebhookEndpointNotFoundError(endpoint_id)
    return endpoint


def update_endpoint(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    changes: Mapping[str, Any],
    now: datetime | None = None,
) -> WebhookEndpoint:
    """Change `url`, `event_types` or `enabled`; enabling again clears the failure streak."""
    unknown = sorted(set(changes) - UPDATABLE_FIELDS)
    if unknown:
        raise ValueError(f"cannot change {', '.join(unknown)}")
    endpoint = get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id, for_update=True)
    if "url" in changes:
        endpoint.url = changes["url"]
    if "event_types" in changes:
        endpoint.event_types = _check_types(changes["event_types"])
    if "enabled" in changes:
        if changes["enabled"] and not endpoint.enabled:
            endpoint.failing_since = None
            endpoint.disabled_reason = None
        endpoint.enabled = bool(changes["enabled"])
    endpoint.updated_at = now or utcnow()
    session.flush()
    return endpoint


def delete_endpoint(session: Session, *, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    """The endpoint goes with its deliveries and attempts (the foreign keys cascade)."""
    endpoint = get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id, for_update=True)
    session.delete(endpoint)
    session.flush()


def rotate_secret(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    overlap: timedelta = timedelta(hours=24),
    now: datetime | None = None,
) -> WebhookEndpoint:
    """A new signing secret; the one it replaces keeps signing beside it for `overlap`."""
    now = now or utcnow()
    endpoint = get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id, for_update=True)
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = now + overlap
    endpoint.secret = new_secret()
    endpoint.updated_at = now
    session.flush()
    return endpoint


def signing_secrets(endpoint: WebhookEndpoint, *, now: datetime) -> tuple[str, ...]:
    """The secrets to sign with: the current one, and the previous one during its overlap."""
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > now:
        return (endpoint.secret, endpoint.previous_secret)
    return (endpoint.secret,)


def list_deliveries(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    page: int = 1,
    limit: int = 20,
    max_limit: int = 100,
) -> tuple[Page[WebhookDelivery], dict[uuid.UUID, list[WebhookAttempt]]]:
    """The endpoint's deliveries, newest event first, and every attempt of each, oldest first."""
    get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    limit = min(max(limit, 1), max_limit)
    statement = (
        deliveries_of(tenant_id)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
        .order_by(WebhookDelivery.sequence.desc(), WebhookDelivery.id)
    )
    total = len(list(session.scalars(statement.with_only_columns(WebhookDelivery.id))))
    items = list(session.scalars(statement.limit(limit).offset((max(page, 1) - 1) * limit)))
    attempts: dict[uuid.UUID, list[WebhookAttempt]] = {item.id: [] for item in items}
    if items:
        for attempt in session.scalars(
            select(WebhookAttempt)
            .where(
                WebhookAttempt.tenant_id == tenant_id,
                WebhookAttempt.delivery_id.in_(list(attempts)),
            )
            .order_by(WebhookAttempt.attempted_at, WebhookAttempt.id)
        ):
            attempts[attempt.delivery_id].append(attempt)
    return Page(items=items, page=page, limit=limit, total=total), attempts


def redeliver(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    delivery_id: uuid.UUID,
    now: datetime | None = None,
) -> WebhookDelivery:
    """Send a delivery again, whatever became of it, with a fresh retry schedule."""
    delivery = session.scalars(
        deliveries_of(tenant_id)
        .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.id == delivery_id)
        .with_for_update()
    ).one_or_none()
    if delivery is None:
        raise DeliveryNotFoundError(delivery_id)
    _reset(delivery, now=now or utcnow())
    session.flush()
    return delivery


def attempts_of(
    session: Session, *, tenant_id: uuid.UUID, delivery_id: uuid.UUID
) -> list[WebhookAttempt]:
    """A delivery's attempts, oldest first."""
    return list(
        session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.tenant_id == tenant_id, WebhookAttempt.delivery_id == delivery_id)
            .order_by(WebhookAttempt.attempted_at, WebhookAttempt.id)
        )
    )


def redeliver_by_id(
    session: Session, *, delivery_ids: Sequence[uuid.UUID], now: datetime | None = None
) -> list[WebhookDelivery]:
    """The operator's redelivery (`intake events redeliver`), across tenants; all or nothing."""
    wanted = list(dict.fromkeys(delivery_ids))
    found = {
        d.id: d
        for d in session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.id.in_(wanted)).with_for_update()
        )
    }
    for delivery_id in wanted:
        if delivery_id not in found:
            raise DeliveryNotFoundError(delivery_id)
    for delivery in found.values():
        _reset(delivery, now=now or utcnow())
    session.flush()
    return [found[d] for d in wanted]


def _reset(delivery: WebhookDelivery, *, now: datetime) -> None:
    delivery.state = "pending"
    delivery.attempts = 0
    delivery.next_attempt_at = now


# --- the delivery machinery, run by the worker ------------------------------------------


def endpoints_with_work(session: Session, *, now: datetime, limit: int = 1000) -> list[uuid.UUID]:
    """Enabled endpoints with no round running that have events to fan out or a delivery due.

    A sweep across tenants by design: it reads ids only; each round is scoped to its endpoint.
    """
    due = exists().where(
        WebhookDelivery.endpoint_id == WebhookEndpoint.id,
        WebhookDelivery.state == "pending",
        WebhookDelivery.next_attempt_at <= now,
    )
    return list(
        session.scalars(
            select(WebhookEndpoint.id)
            .join(EventCounter, EventCounter.tenant_id == WebhookEndpoint.tenant_id, isouter=True)
            .where(
                WebhookEndpoint.enabled.is_(True),
                or_(WebhookEndpoint.lease_until.is_(None), WebhookEndpoint.lease_until < now),
                or_(WebhookEndpoint.cursor < EventCounter.last_sequence, due),
            )
            .limit(limit)
        )
    )


def take_lease(
    session: Session, *, endpoint_id: uuid.UUID, now: datetime, lease: timedelta
) -> bool:
    """Claim the endpoint's one round; False when another holds an unexpired lease."""
    result = session.execute(
        update(WebhookEndpoint)
        .where(
            WebhookEndpoint.id == endpoint_id,
            or_(WebhookEndpoint.lease_until.is_(None), WebhookEndpoint.lease_until < now),
        )
        .values(lease_until=now + lease)
    )
    return bool(getattr(result, "rowcount", 0))


def extend_lease(session: Session, *, endpoint_id: uuid.UUID, until: datetime | None) -> None:
    """Move the lease on (or give it up with None)."""
    session.execute(
        update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id).values(lease_until=until)
    )


def fan_out(session: Session, *, endpoint_id: uuid.UUID, limit: int = FAN_OUT_BATCH) -> int:
    """Make the endpoint's deliveries for events past its cursor; returns how many were made.

    The counter is read first: every event up to it has committed, so moving the cursor to
    it skips nothing.
    """
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or not endpoint.enabled:
        return 0
    tenant_id = endpoint.tenant_id
    last = last_sequence(session, tenant_id=tenant_id)
    if endpoint.cursor >= last:
        return 0
    rows = session.execute(
        select(Event.id, Event.sequence, Event.type)
        .where(
            Event.tenant_id == tenant_id,
            Event.sequence > endpoint.cursor,
            Event.sequence <= last,
        )
        .order_by(Event.sequence)
        .limit(limit)
    ).all()
    wanted = set(endpoint.event_types)
    now = utcnow()
    new = [
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "endpoint_id": endpoint_id,
            "event_id": row.id,
            "sequence": row.sequence,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for row in rows
        if not wanted or row.type in wanted
    ]
    if new:
        session.execute(insert(WebhookDelivery), new)
    endpoint.cursor = rows[-1].sequence if len(rows) == limit else last
    session.flush()
    return len(new)


def due_deliveries(
    session: Session, *, endpoint_id: uuid.UUID, now: datetime, limit: int = 50
) -> list[DueDelivery] | datetime | None:
    """The endpoint's pending deliveries from the lowest sequence on, while they are due.

    When the lowest is not due yet, when it will be: it holds back the later ones, so that
    they go in order. None when nothing is pending (or the endpoint is gone or disabled).
    """
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or not endpoint.enabled:
        return None
    rows = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.next_attempt_at, Event)
        .join(Event, Event.id == WebhookDelivery.event_id)
        .where(
            WebhookDelivery.tenant_id == endpoint.tenant_id,
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.state == "pending",
        )
        .order_by(WebhookDelivery.sequence)
        .limit(limit)
    ).all()
    if not rows:
        return None
    first_due: datetime = rows[0].next_attempt_at
    if first_due > now:
        return first_due
    keys = signing_secrets(endpoint, now=now)
    due = []
    for delivery_id, next_attempt_at, event in rows:
        if next_attempt_at > now:
            break
        due.append(
            DueDelivery(
                delivery_id=delivery_id,
                endpoint_id=endpoint_id,
                event=event,
                url=endpoint.url,
                secrets=keys,
            )
        )
    return due


def record_attempt(
    session: Session,
    *,
    delivery_id: uuid.UUID,
    result: AttemptResult,
    now: datetime,
    backoff_scale: float = 1.0,
) -> WebhookDelivery | None:
    """Keep the attempt, and move its delivery on: done, retried later, or failed for good.

    Every non-2xx answer is retried, as Svix does: a 4xx is often a receiver's deploy gone
    wrong, fixed within the day. An endpoint failing without a success for DISABLE_AFTER is
    disabled, with a `webhook_endpoint.disabled` event.
    """
    delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if delivery is None:  # its endpoint was deleted meanwhile
        return None
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    assert endpoint is not None
    session.add(
        WebhookAttempt(
            tenant_id=delivery.tenant_id,
            delivery_id=delivery.id,
            attempted_at=now,
            outcome=result.outcome,
            status_code=result.status_code,
            error=result.error[:500] if result.error else None,
            latency_ms=result.latency_ms,
        )
    )
    delivery.attempts += 1
    delivery.last_status = result.status_code
    delivery.last_error = result.error[:500] if result.error else None
    if result.succeeded:
        delivery.state = "succeeded"
        delivery.delivered_at = now
        endpoint.failing_since = None
    else:
        if delivery.attempts > len(RETRY_SCHEDULE):
            delivery.state = "failed"
        else:
            delivery.next_attempt_at = now + retry_wait(
                delivery.attempts, retry_after=result.retry_after, scale=backoff_scale
            )
        if endpoint.failing_since is None:
            endpoint.failing_since = now
        elif endpoint.enabled and now - endpoint.failing_since >= DISABLE_AFTER:
            disable_endpoint(session, endpoint=endpoint, now=now)
    session.flush()
    return delivery


def retry_wait(
    attempts: int, *, retry_after: timedelta | None = None, scale: float = 1.0
) -> timedelta:
    """The wait after the `attempts`-th failed attempt: the schedule's step with ±20% jitter,
    or the receiver's `Retry-After` when that is longer (up to a day)."""
    step = RETRY_SCHEDULE[min(attempts, len(RETRY_SCHEDULE)) - 1] * scale
    wait = step * random.uniform(0.8, 1.2)
    if retry_after is not None:
        wait = max(wait, min(retry_after, MAX_RETRY_AFTER))
    return wait


def disable_endpoint(session: Session, *, endpoint: WebhookEndpoint, now: datetime) -> None:
    endpoint.enabled = False
    endpoint.disabled_reason = (
        f"every delivery failed since {endpoint.failing_since:%Y-%m-%dT%H:%M:%SZ}"
    )
    endpoint.updated_at = now
    record_event(
        session,
        tenant_id=endpoint.tenant_id,
        type="webhook_endpoint.disabled",
        data={
            "endpointId": str(endpoint.id),
            "url": endpoint.url,
            "failingSince": f"{endpoint.failing_since:%Y-%m-%dT%H:%M:%SZ}",
        },
    )


def delivery_stats(session: Session) -> tuple[dict[str, int], dict[str, int]]:
    """Attempts by outcome and deliveries by state, across tenants, for /metrics."""
    attempts: dict[str, int] = {}
    for outcome, count in session.execute(
        select(WebhookAttempt.outcome, func.count()).group_by(WebhookAttempt.outcome)
    ):
        attempts[outcome] = count
    deliveries: dict[str, int] = {}
    for state, count in session.execute(
        select(WebhookDelivery.state, func.count()).group_by(WebhookDelivery.state)
    ):
        deliveries[state] = count
    return attempts, deliveries
