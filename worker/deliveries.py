"""Outbound webhook deliveries: the rounds that send an endpoint's events, and the pump that
starts them.

Deliveries run on their own queue (`DELIVERY_QUEUE`), consumed by `intake worker --deliveries`
with a thread pool, so a slow or dead endpoint holds one thread for at most the request
timeout, never an ingestion worker. A round sends one endpoint's due deliveries in sequence
order and stops at the first failure: the failed delivery waits out its backoff and holds
the later ones back, so order is kept and a dead endpoint costs one request per backoff step
rather than one per event. Each request: Standard Webhooks headers
(https://www.standardwebhooks.com/), the address checked at connect time (worker/ssrf.py),
no redirects, and at most `MAX_RESPONSE_BYTES` of the answer read.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from standardwebhooks import Webhook

from intake.settings import Settings
from models.db import Database
from models.events import event_body
from models.schema import utcnow
from models.webhook_endpoints import (
    AttemptResult,
    DueDelivery,
    due_deliveries,
    endpoints_with_work,
    extend_lease,
    fan_out,
    record_attempt,
    redeliver_by_id,
    take_lease,
)
from worker.ssrf import Resolver, UnsafeWebhookUrlError, check_url, system_resolver

log = logging.getLogger(__name__)

DELIVERY_QUEUE = "intake-deliveries"
DELIVER_TASK = "intake.deliver_endpoint"
MAX_RESPONSE_BYTES = 4096
# A round owns its endpoint this long past its last step; a lost task frees it by expiring.
LEASE = timedelta(seconds=120)
ROUND_BUDGET_SECONDS = 30.0
USER_AGENT = "Intake-Webhooks/1.0"


def sign(secrets: tuple[str, ...], *, msg_id: str, timestamp: datetime, body: str) -> str:
    """`webhook-signature`: one `v1,<base64>` per secret, space-separated (the spec's form for
    a rotation's overlap)."""
    return " ".join(
        Webhook(secret).sign(msg_id=msg_id, timestamp=timestamp, data=body) for secret in secrets
    )


def _retry_after(value: str | None, *, now: datetime) -> timedelta | None:
    """`Retry-After` as seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when - now, timedelta(0))


class WebhookSender:
    """Sends one delivery; thread-safe (one connection pool shared by the round threads)."""

    def __init__(
        self,
        *,
        timeout_seconds: float,
        allow_private: bool,
        resolve: Resolver = system_resolver,
    ) -> None:
        self._allow_private = allow_private
        self._resolve = resolve
        # trust_env off: no proxy from the environment may carry requests past the checks.
        self._client = httpx.Client(
            follow_redirects=False, timeout=httpx.Timeout(timeout_seconds), trust_env=False
        )

    def close(self) -> None:
        self._client.close()

    def send(self, due: DueDelivery) -> AttemptResult:
        started = time.monotonic()

        def elapsed() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            target = check_url(due.url, allow_private=self._allow_private, resolve=self._resolve)
        except UnsafeWebhookUrlError as exc:
            return AttemptResult("refused_address", elapsed(), error=str(exc))
        now = datetime.now(UTC)
        payload = event_body(due.event)
        body = json.dumps({**payload, "timestamp": payload["createdAt"]}, separators=(",", ":"))
        msg_id = str(due.event.id)
        url = httpx.URL(due.url)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": url.netloc.decode(),
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": sign(due.secrets, msg_id=msg_id, timestamp=now, body=body),
        }
        # Connect to an address that was checked, not to whatever the name resolves to next;
        # the next checked address is tried only when one refuses the connection.
        for index, address in enumerate(target.addresses):
            try:
                status, retry_after = self._post(
                    url.copy_with(host=address), body, headers, sni_hostname=target.host, now=now
                )
                break
            except httpx.ConnectError as exc:
                if index + 1 < len(target.addresses):
                    continue
                return AttemptResult(
                    "connection_error", elapsed(), error=f"{type(exc).__name__}: {exc}"[:500]
                )
            except httpx.TimeoutException as exc:
                return AttemptResult("timeout", elapsed(), error=f"timed out: {type(exc).__name__}")
            except httpx.HTTPError as exc:
                return AttemptResult(
                    "connection_error", elapsed(), error=f"{type(exc).__name__}: {exc}"[:500]
                )
        if 200 <= status < 300:
            return AttemptResult("succeeded", elapsed(), status_code=status)
        return AttemptResult(
            "http_error",
            elapsed(),
            status_code=status,
            error=f"answered {status}",
            retry_after=retry_after,
        )

    def _post(
        self,
        url: httpx.URL,
        body: str,
        headers: dict[str, str],
        *,
        sni_hostname: str,
        now: datetime,
    ) -> tuple[int, timedelta | None]:
        """POST and read at most MAX_RESPONSE_BYTES of the answer: its status, Retry-After."""
        with self._client.stream(
            "POST",
            url,
            content=body.encode(),
            headers=headers,
            extensions={"sni_hostname": sni_hostname},
        ) as response:
            read = 0
            for chunk in response.iter_raw():
                read += len(chunk)
                if read >= MAX_RESPONSE_BYTES:
                    break
            return response.status_code, _retry_after(response.headers.get("retry-after"), now=now)


@dataclass
class RoundResult:
    fanned_out: int = 0
    succeeded: int = 0
    failed: int = 0
    wake_at: datetime | None = None


def run_delivery_round(
    db: Database,
    sender: WebhookSender,
    *,
    endpoint_id: uuid.UUID,
    backoff_scale: float = 1.0,
    budget_seconds: float = ROUND_BUDGET_SECONDS,
) -> RoundResult:
    """Fan out the endpoint's new events and send its due deliveries in sequence order, until
    none is due, one fails, or the budget is spent. The caller holds the endpoint's lease;
    the round gives it up at the end. No transaction is open while a request is in flight."""
    result = RoundResult()
    deadline = time.monotonic() + budget_seconds
    try:
        while time.monotonic() < deadline:
            with db.unit_of_work() as session:
                result.fanned_out += fan_out(session, endpoint_id=endpoint_id)
                due = due_deliveries(session, endpoint_id=endpoint_id, now=utcnow())
            if not isinstance(due, list):
                result.wake_at = due
                break
            if not _send_in_order(
                db, sender, due, result, backoff_scale=backoff_scale, deadline=deadline
            ):
                break
    finally:
        with db.unit_of_work() as session:
            extend_lease(session, endpoint_id=endpoint_id, until=None)
    return result


def _send_in_order(
    db: Database,
    sender: WebhookSender,
    due: list[DueDelivery],
    result: RoundResult,
    *,
    backoff_scale: float,
    deadline: float,
) -> bool:
    """Send `due` one after another, keeping each attempt and moving the lease on; False at
    the first failure or when the round's time is up."""
    for delivery in due:
        if time.monotonic() >= deadline:
            return False
        attempt = sender.send(delivery)
        with db.unit_of_work() as session:
            record_attempt(
                session,
                delivery_id=delivery.delivery_id,
                result=attempt,
                now=utcnow(),
                backoff_scale=backoff_scale,
            )
            extend_lease(session, endpoint_id=delivery.endpoint_id, until=utcnow() + LEASE)
        log.info(
            "webhook.attempt",
            extra={
                "endpoint_id": str(delivery.endpoint_id),
                "delivery_id": str(delivery.delivery_id),
                "event_type": delivery.event.type,
                "outcome": attempt.outcome,
                "status_code": attempt.status_code,
                "latency_ms": attempt.latency_ms,
            },
        )
        if not attempt.succeeded:
            result.failed += 1
            return False
        result.succeeded += 1
    return True


def pump_once(db: Database, celery_app: Any) -> int:
    """Lease every endpoint that has work and no round, and send a round for each; returns
    how many were sent. Leases commit before the tasks are sent."""
    with db.unit_of_work() as session:
        now = utcnow()
        claimed = [
            endpoint_id
            for endpoint_id in endpoints_with_work(session, now=now)
            if take_lease(session, endpoint_id=endpoint_id, now=now, lease=LEASE)
        ]
    for endpoint_id in claimed:
        celery_app.send_task(DELIVER_TASK, args=[str(endpoint_id)], queue=DELIVERY_QUEUE)
    return len(claimed)


class DeliveryPump:
    """A daemon thread that starts delivery rounds every `delivery_poll_seconds`.

    Polling the database rather than waking on each write keeps the writers (API requests,
    ingestion batches) free of any delivery work: they only insert their events.
    """

    def __init__(self, settings: Settings, celery_app: Any) -> None:
        self._settings = settings
        self._app = celery_app
        self._period = settings.delivery_poll_seconds
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="intake-delivery-pump", daemon=True)
        self._db: Database | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        if self._db is not None:
            self._db.dispose()

    def _run(self) -> None:
        self._db = Database(self._settings.database_url)
        delay = random.uniform(0, self._period)
        while not self._stopped.wait(delay):
            delay = self._period
            try:
                pump_once(self._db, self._app)
            except Exception as exc:  # the pump must outlive a database or broker outage
                log.warning("delivery.pump_failed", extra={"error": type(exc).__name__})


def redeliver(db: Database, *, delivery_ids: list[uuid.UUID]) -> int:
    """The operator's `intake events redeliver`: the deliveries go again with a fresh schedule
    (the pump starts their rounds). All or nothing: an unknown id changes nothing."""
    with db.unit_of_work() as session:
        return len(redeliver_by_id(session, delivery_ids=delivery_ids))
