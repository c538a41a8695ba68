"""The Celery app: broker, delivery guarantees, time limits, and the tasks registered on it.

The queue only carries wake-ups ("tenant T has pending rows"); the `messages` table is the
source of truth, so a lost or repeated task costs time, never a message.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from intake.settings import Settings
from worker.deliveries import DELIVER_TASK, DELIVERY_QUEUE
from worker.tasks import register

QUEUE = "intake"

# A task that outlives its visibility timeout on Redis is delivered again to another worker.
# Drains stop themselves well before this (DRAIN_BUDGET_SECONDS) and countdowns stay under a
# minute, so redelivery only happens after a worker really died.
VISIBILITY_TIMEOUT_SECONDS = 900
SOFT_TIME_LIMIT_SECONDS = 240
HARD_TIME_LIMIT_SECONDS = 300
BROKER_SOCKET_TIMEOUT_SECONDS = 2.0
# A publish is retried once, briefly: a wake-up is only a wake-up, and the reconciler covers a
# lost one, so a broker outage must not hold its sender for kombu's default retries.
PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}


def _transport_options(broker_url: str) -> dict[str, Any]:
    if broker_url.startswith("sqla+"):
        # kombu hands these to SQLAlchemy's create_engine; several threads and processes share
        # the SQLite file, so wait for its lock instead of failing at once.
        return {"connect_args": {"timeout": 30, "check_same_thread": False}}
    # Bounded socket waits: a publish to a stalled Redis fails within seconds instead of
    # hanging the thread that sends the wake-up (the reconciler re-sends what it could not).
    return {
        "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
        "socket_timeout": BROKER_SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": BROKER_SOCKET_TIMEOUT_SECONDS,
    }


def make_celery(settings: Settings) -> Any:
    """A Celery app on `settings.effective_broker_url` with the intake tasks registered."""
    app = Celery("intake", broker=settings.effective_broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_default_queue=QUEUE,
        # Deliveries wait on other people's servers: their own queue and workers.
        task_routes={DELIVER_TASK: {"queue": DELIVERY_QUEUE}},
        # Ack after the drain committed; a worker that dies mid-task gets its task redelivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=SOFT_TIME_LIMIT_SECONDS,
        task_time_limit=HARD_TIME_LIMIT_SECONDS,
        broker_transport_options=_transport_options(settings.effective_broker_url),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=BROKER_SOCKET_TIMEOUT_SECONDS,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    app.intake_settings = settings
    register(app)
    return app
