"""Fair drains: a tenant's backlog is drained a short slice at a time, so others get their turn.

Real PostgreSQL, real Redis and one real `intake worker` process: the worker is the scarce
resource, and its queue is what must round-robin the tenants.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from intake.settings import Settings
from models.db import Database
from models.schema import Message
from tests.factories import make_tenant
from tests.worker.helpers import inbound, store
from tests.worker.test_end_to_end import Workers, wait_for, worker_env
from worker.accept import accept
from worker.celery_app import make_celery
from worker.dispatch import Dispatcher

pytestmark = pytest.mark.e2e

HOT_BACKLOG = 6000


def pending(db: Database, tenant_id: uuid.UUID) -> int:
    with db.sessions() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.tenant_id == tenant_id, Message.state == "pending")
            )
            or 0
        )


@pytest.fixture
def one_worker(postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    workers = Workers(
        worker_env(postgres_url, redis_url, redis_url, INTAKE_BATCH_SIZE="100"), tmp_path
    )
    yield workers
    workers.kill_all()


def test_a_quiet_tenant_is_not_queued_behind_a_hot_backlog(
    postgres_db: Database, postgres_url: str, redis_url: str, one_worker: Workers
) -> None:
    """With one worker busy on a tenant's 6,000 pending messages, another tenant's single
    message is handled while most of that backlog is still pending."""
    settings = Settings(database_url=postgres_url, broker_url=redis_url, redis_url=redis_url)
    dispatcher = Dispatcher(settings, make_celery(settings))
    hot, quiet = make_tenant(postgres_db), make_tenant(postgres_db)
    store(
        postgres_db, hot.id, *[inbound("sms", phone=f"+1415557{n:04d}") for n in range(HOT_BACKLOG)]
    )
    dispatcher.dispatch(hot.id)
    one_worker.start(1)
    wait_for(
        lambda: pending(postgres_db, hot.id) < HOT_BACKLOG,
        timeout=60,
        what="the hot tenant's drain to start",
    )
    accept(
        postgres_db, dispatcher, tenant_id=quiet.id, messages=[inbound("sms", phone="+14155550199")]
    )
    wait_for(
        lambda: pending(postgres_db, quiet.id) == 0,
        timeout=60,
        what=f"the quiet tenant's message\n{one_worker.logs()}",
    )
    assert pending(postgres_db, hot.id) > HOT_BACKLOG // 2
    wait_for(lambda: pending(postgres_db, hot.id) == 0, timeout=240, what="the hot backlog")
