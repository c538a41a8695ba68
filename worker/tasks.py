"""The Celery tasks, thin: each turns its arguments into one call.

`ingest_tenant` drains a tenant's pending rows; `reconcile` re-sends drains the queue lost.
Transient database and Redis errors, and a tenant lock held too long by another drain, are
retried with exponential backoff and jitter, a bounded number of times; after that the rows
are still pending in the database and the reconciler sends them again.
"""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

import redis
from sqlalchemy.exc import InterfaceError, OperationalError

from worker.context import WorkerContext, context_of
from worker.deliveries import DELIVER_TASK, run_delivery_round
from worker.dispatch import INGEST_TASK, RECONCILE_TASK
from worker.ingestion import DrainResult, drain_tenant
from worker.locks import LockWaitTimeoutError
from worker.reconciler import prune_expired, prune_expired_events, reconcile

log = logging.getLogger(__name__)

TRANSIENT_ERRORS = (
    OperationalError,
    InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
    LockWaitTimeoutError,
)
RETRY_OPTIONS: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 8,
}
# A drain hands over to a fresh task (queued behind every other tenant's) after a short slice:
# a tenant with 20,000 pending rows then delays another tenant's one message by about one slice
# a worker, not by its whole backlog. Fairness lives here, not in a webhook rate limit, because
# verified provider traffic is never refused (Twilio does not resend). A slice always takes one
# batch, so a busy tenant still moves `batch_size` rows a turn.
DRAIN_BUDGET_SECONDS = 0.5


def ingest_tenant_now(context: WorkerContext, *, tenant_id: uuid.UUID) -> DrainResult:
    """Drain one tenant, then schedule whatever it left: a handover, or retries of errors."""
    settings = context.settings
    # Before reading any row: an accept that commits after this sets the flag anew and so
    # sends another drain, and one that committed before is read below.
    context.dispatcher.clear_flag(tenant_id)
    result = drain_tenant(
        context.db,
        context.locks,
        tenant_id=tenant_id,
        batch_size=settings.batch_size,
        max_attempts=settings.max_attempts,
        budget_seconds=DRAIN_BUDGET_SECONDS,
    )
    if result.out_of_time or result.lost_lock:
        # Behind the queue's tail, and only if no drain of this tenant is queued already
        # (an accept during this slice may have sent one): one turn a tenant in the queue.
        context.dispatcher.dispatch(tenant_id)
    if result.retrying:
        attempts = max(result.retrying.values())
        countdown = min(2.0**attempts, settings.reconcile_after_seconds)
        context.dispatcher.dispatch_now(tenant_id, countdown=countdown * random.uniform(0.5, 1.0))
    log.info(
        "ingest.drained",
        extra={
            "tenant_id": str(tenant_id),
            "handled": result.handled,
            "contacts_created": result.contacts_created,
            "failed": result.failed,
            "retrying": len(result.retrying),
        },
    )
    return result


def register(app: Any) -> None:
    """Register the tasks on `app`; they find their context through `self.app`."""

    # `*_queued_before` takes the message ids that tasks sent by earlier versions still carry.
    def ingest_tenant(self: Any, tenant_id: str, *_queued_before: Any) -> dict[str, int]:
        result = ingest_tenant_now(context_of(self.app), tenant_id=uuid.UUID(tenant_id))
        return {"handled": result.handled, "failed": result.failed}

    def reconcile_task(self: Any) -> int:
        context = context_of(self.app)
        prune_expired_events(context.db, retention_days=context.settings.events_retention_days)
        woken = reconcile(
            context.db,
            context.dispatcher,
            older_than_seconds=context.settings.reconcile_after_seconds,
        )
        prune_expired(context.db)
        return woken

    def deliver_endpoint(self: Any, endpoint_id: str) -> int:
        context = context_of(self.app)
        result = run_delivery_round(
            context.db,
            context.webhook_sender,
            endpoint_id=uuid.UUID(endpoint_id),
            backoff_scale=context.settings.delivery_backoff_scale,
        )
        return result.succeeded

    # Not shared: each app (one per settings) keeps its own tasks and finds its own context.
    app.task(name=INGEST_TASK, bind=True, shared=False, **RETRY_OPTIONS)(ingest_tenant)
    app.task(name=RECONCILE_TASK, bind=True, shared=False, **RETRY_OPTIONS)(reconcile_task)
    # No autoretry: a round that failed gives its lease up (or it expires) and the pump
    # starts another.
    app.task(name=DELIVER_TASK, bind=True, shared=False)(deliver_endpoint)
