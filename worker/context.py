"""What a worker process's tasks share: settings, the database, the locks, the dispatcher.

Made lazily inside the process that runs the tasks, so that a prefork parent never opens a
database or Redis connection that its children would inherit across fork().
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import Any

from intake.settings import Settings
from models.db import Database
from worker.deliveries import WebhookSender
from worker.dispatch import Dispatcher
from worker.locks import TenantLocks, make_locks

_guard = threading.Lock()


class WorkerContext:
    def __init__(self, settings: Settings, celery_app: Any) -> None:
        self.settings = settings
        self.app = celery_app

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.database_url)

    @cached_property
    def locks(self) -> TenantLocks:
        return make_locks(self.settings)

    @cached_property
    def dispatcher(self) -> Dispatcher:
        return Dispatcher(self.settings, self.app)

    @cached_property
    def webhook_sender(self) -> WebhookSender:
        return WebhookSender(
            timeout_seconds=self.settings.delivery_timeout_seconds,
            allow_private=self.settings.events_allow_private,
        )


def context_of(celery_app: Any) -> WorkerContext:
    """The app's context, made on first use in this process."""
    with _guard:
        context: WorkerContext | None = getattr(celery_app, "intake_context", None)
        if context is None:
            context = WorkerContext(celery_app.intake_settings, celery_app)
            celery_app.intake_context = context
        return context
