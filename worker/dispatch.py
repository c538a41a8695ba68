"""Waking a worker for a tenant's pending rows, coalesced so a busy tenant costs few tasks.

One Celery task per message caps ingestion near 900 messages/s on our machines (see
performance.md); one task per tenant with pending rows does not. With Redis, a flag
`intake:scheduled:{tenant}` says "a drain is queued and has not started yet": the webhook
commits its row *before* setting the flag, and the drain deletes the flag *before* reading
pending rows, so every committed row is read by some drain. Without Redis (embedded), each
accept call sends its own task.

The task carries the tenant id alone: the rows in the database are the source of truth, and
the queue only carries the wake-up.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

import redis

from intake.settings import Settings
from worker.redis_clients import make_redis

log = logging.getLogger(__name__)

INGEST_TASK = "intake.ingest_tenant"
RECONCILE_TASK = "intake.reconcile"


def scheduled_key(tenant_id: uuid.UUID | str) -> str:
    return f"intake:scheduled:{tenant_id}"


class Dispatcher:
    """Sends `ingest_tenant` tasks after the rows they announce are committed."""

    def __init__(
        self, settings: Settings, celery_app: Any, redis_client: redis.Redis | None = None
    ) -> None:
        self._app = celery_app
        self.redis = redis_client
        if self.redis is None and settings.redis_url:
            self.redis = make_redis(settings.redis_url)
        # A flag outliving a lost task only delays the next wake-up until it expires; the
        # reconciler bypasses it meanwhile.
        self._flag_ttl = max(1, math.ceil(settings.reconcile_after_seconds))

    def dispatch(self, tenant_id: uuid.UUID) -> bool:
        """Wake a drain for `tenant_id` unless one is already queued; True if a task was sent."""
        if self.redis is not None:
            try:
                newly_set = self.redis.set(scheduled_key(tenant_id), 1, nx=True, ex=self._flag_ttl)
            except redis.RedisError as exc:
                # Sending a task too many is harmless; sending none could strand the rows.
                log.warning(
                    "dispatch.flag_unavailable",
                    extra={"tenant_id": str(tenant_id), "error": type(exc).__name__},
                )
                newly_set = True
            if not newly_set:
                return False
        self.send(tenant_id)
        return True

    def clear_flag(self, tenant_id: uuid.UUID) -> None:
        """Called by a drain before it reads rows: later accepts must wake a new drain."""
        if self.redis is not None:
            self.redis.delete(scheduled_key(tenant_id))

    def dispatch_now(self, tenant_id: uuid.UUID, *, countdown: float | None = None) -> None:
        """Send a drain whatever the flag says: for the reconciler and for retries of errors."""
        if self.redis is not None and countdown is None:
            try:
                self.redis.set(scheduled_key(tenant_id), 1, ex=self._flag_ttl)
            except redis.RedisError as exc:
                log.warning(
                    "dispatch.flag_unavailable",
                    extra={"tenant_id": str(tenant_id), "error": type(exc).__name__},
                )
        self.send(tenant_id, countdown=countdown)

    def send(self, tenant_id: uuid.UUID, *, countdown: float | None = None) -> None:
        self._app.send_task(INGEST_TASK, args=[str(tenant_id)], countdown=countdown)


def make_dispatcher(settings: Settings, celery_app: Any | None = None) -> Dispatcher:
    """A Dispatcher on `celery_app`, or on a new app made from `settings`."""
    if celery_app is None:
        from worker.celery_app import make_celery

        celery_app = make_celery(settings)
    return Dispatcher(settings, celery_app)
