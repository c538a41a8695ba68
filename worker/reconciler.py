"""The reconciler: rows still pending long after they were accepted get their drain sent again.

It covers a queue that lost its tasks (a broker restart, a flushed Redis), a worker killed
mid-drain, and messages waiting out their retry. Scheduling: every `intake worker` runs a
small timer thread (`ReconcileTimer`) that, each `reconcile_every_seconds`, sends one
`reconcile` task; with Redis, `SET intake:reconcile:due NX EX <period>` lets only one worker
of the fleet send it per period. No Celery beat process is needed, so docker-compose runs
workers only. Re-sending is always safe: a drain of a tenant with nothing pending does nothing.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections import defaultdict
from datetime import timedelta
from typing import Any

import redis
from sqlalchemy import select

from intake.settings import Settings
from models.db import Database
from models.events import prune_tenant_events, tenants_with_events_before
from models.schema import Message, utcnow
from worker.dispatch import MAX_IDS_IN_TASK, RECONCILE_TASK, Dispatcher

log = logging.getLogger(__name__)

DUE_KEY = "intake:reconcile:due"
# One sweep re-sends at most this many rows' worth of wake-ups; the next sweep takes the rest.
SWEEP_LIMIT = 20_000


def reconcile(db: Database, dispatcher: Dispatcher, *, older_than_seconds: float) -> int:
    """Send a drain for every tenant with rows pending longer than `older_than_seconds`;
    returns how many tenants were woken."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    # A sweep across tenants by design: it only reads ids, and each drain is tenant-scoped.
    with db.sessions() as session:
        rows = session.execute(
            select(Message.tenant_id, Message.id)
            .where(Message.state == "pending", Message.accepted_at < cutoff)
            .order_by(Message.accepted_at)
            .limit(SWEEP_LIMIT)
        ).all()
    stale: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for tenant_id, message_id in rows:
        if len(stale[tenant_id]) < MAX_IDS_IN_TASK:
            stale[tenant_id].append(message_id)
    for tenant_id, ids in stale.items():
        dispatcher.dispatch_now(tenant_id, ids)
    if stale:
        log.info("reconcile.redispatched tenants=%d messages=%d", len(stale), len(rows))
    return len(stale)


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
            "events.pruned tenants=%d events=%d",
            len(tenant_ids),
            removed,
            extra={"tenants": len(tenant_ids), "events": removed},
        )
    return removed


class ReconcileTimer:
    """A daemon thread that sends the `reconcile` task once a period for the whole fleet."""

    def __init__(self, settings: Settings, celery_app: Any) -> None:
        self._app = celery_app
        self._period = settings.reconcile_every_seconds
        self._redis = redis.Redis.from_url(settings.redis_url) if settings.redis_url else None
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
                log.warning("reconcile.tick_failed error=%s", exc)

    def tick(self) -> bool:
        """Send the reconcile task if no other worker did this period; True if sent."""
        if self._redis is not None:
            ttl_ms = max(1, int(self._period * 1000) - 50)
            if not self._redis.set(DUE_KEY, 1, nx=True, px=ttl_ms):
                return False
        self._app.send_task(RECONCILE_TASK, expires=self._period * 4)
        return True
