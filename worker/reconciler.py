"""The reconciler: rows still pending long after they were accepted get their drain sent again.

It covers a queue that lost its tasks (a broker restart, a flushed Redis), a worker killed
mid-drain, and messages waiting out their retry. Scheduling: every `intake worker` runs a
small timer thread (`ReconcileTimer`) that, each `reconcile_every_seconds`, sends one
`reconcile` task; with Redis, `SET intake:reconcile:due NX EX <period>` lets only one worker
of the fleet send it per period. No Celery beat process is needed, so docker-compose runs
workers only. Re-sending is always safe: a drain of a tenant with nothing pending does nothing.

The same task prunes what is kept only for a while: expired Idempotency-Keys and webhook
nonces too old for any replay to pass the provider's own time check.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from channels import mailgun
from intake.settings import Settings
from models.db import Database
from models.events import prune_tenant_events, tenants_with_events_before
from models.idempotency import purge_expired_idempotency_keys
from models.nonces import prune_webhook_nonces
from models.schema import Message, utcnow
from worker.dispatch import RECONCILE_TASK, Dispatcher
from worker.redis_clients import make_redis

log = logging.getLogger(__name__)

DUE_KEY = "intake:reconcile:due"
# Mailgun refuses a timestamp more than MAX_AGE either side of now, so a token accepted once
# can pass that check for at most 2 x MAX_AGE after; twice that again covers clock skew
# between app processes. Mailgun's is the only nonce a webhook stores.
NONCE_RETENTION = 4 * mailgun.MAX_AGE


def reconcile(db: Database, dispatcher: Dispatcher, *, older_than_seconds: float) -> int:
    """Send a drain for every tenant with rows pending longer than `older_than_seconds`;
    returns how many tenants were woken."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    # A sweep across tenants by design: it only reads tenant ids, and each drain is scoped.
    with db.sessions() as session:
        stale = session.execute(
            select(Message.tenant_id, func.count())
            .where(Message.state == "pending", Message.accepted_at < cutoff)
            .group_by(Message.tenant_id)
        ).all()
    for tenant_id, _count in stale:
        dispatcher.dispatch_now(tenant_id)
    if stale:
        log.info(
            "reconcile.redispatched",
            extra={"tenants": len(stale), "messages": sum(count for _, count in stale)},
        )
    return len(stale)


@dataclass(frozen=True)
class Pruned:
    idempotency_keys: int
    webhook_nonces: int


def prune_expired(db: Database, *, now: datetime | None = None) -> Pruned:
    """Delete expired Idempotency-Keys and nonces older than NONCE_RETENTION, in one commit."""
    now = now or utcnow()
    with db.unit_of_work() as session:
        pruned = Pruned(
            idempotency_keys=purge_expired_idempotency_keys(session, now=now),
            webhook_nonces=prune_webhook_nonces(session, before=now - NONCE_RETENTION),
        )
    if pruned.idempotency_keys or pruned.webhook_nonces:
        log.info(
            "reconcile.pruned",
            extra={
                "idempotency_keys": pruned.idempotency_keys,
                "webhook_nonces": pruned.webhook_nonces,
            },
        )
    return pruned


def prune_expired_events(db: Database, *, retention_days: float) -> int:
    """Remove events (and their deliveries) older than the feed keeps; one transaction per
    tenant, so the tenant's counter row is locked only briefly. Returns how many went."""
    before = utcnow() - timedelta(days=retention_days)
    with db.sessions() as session:
        tenant_ids = tenants_with_events_before(session, before=before)
    removed = 0
    for tenant_id in tenant_ids:
        with db.unit_of_work() as session:
            removed += prune_tenant_events(session, tenant_id=tenant_id, before=before)
    if removed:
        log.info(
            "events.pruned",
            extra={"tenants": len(tenant_ids), "events": removed},
        )
    return removed


class ReconcileTimer:
    """A daemon thread that sends the `reconcile` task once a period for the whole fleet."""

    def __init__(self, settings: Settings, celery_app: Any) -> None:
        self._app = celery_app
        self._period = settings.reconcile_every_seconds
        self._redis = make_redis(settings.redis_url) if settings.redis_url else None
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="intake-reconcile-timer", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        # A random first delay spreads workers that start together.
        delay = random.uniform(0, self._period)
        while not self._stopped.wait(delay):
            delay = self._period
            try:
                self.tick()
            except Exception as exc:  # the timer must outlive a broker or Redis outage
                log.warning("reconcile.tick_failed", extra={"error": type(exc).__name__})

    def tick(self) -> bool:
        """Send the reconcile task if no other worker did this period; True if sent."""
        if self._redis is not None:
            ttl_ms = max(1, int(self._period * 1000) - 50)
            if not self._redis.set(DUE_KEY, 1, nx=True, px=ttl_ms):
                return False
        self._app.send_task(RECONCILE_TASK, expires=self._period * 4)
        return True
