"""Wake-ups sent off the answering path: a thread of its own sends each tenant's drain.

A wake-up is only a wake-up (the committed rows are the truth, and the reconciler re-sends what
the queue lost), so it must never delay a webhook's 2xx nor the next group commit. A stalled
broker or Redis then holds this thread alone, for its socket timeouts; meanwhile the tenants to
wake are coalesced, one entry each, so the backlog stays as small as the number of tenants.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

from worker.accept import wake
from worker.dispatch import Dispatcher

IDLE_SECONDS = 1.0


class Waker:
    """Sends `dispatcher.dispatch` for tenants handed over by `wake_later`, one at a time."""

    def __init__(self, dispatcher: Dispatcher, *, idle_seconds: float = IDLE_SECONDS) -> None:
        self.dispatcher = dispatcher
        self.idle_seconds = idle_seconds
        self._pending: dict[uuid.UUID, int] = {}  # tenant -> new rows since its last wake-up
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._sending = 0

    def wake_later(self, tenant_id: uuid.UUID, message_ids: Sequence[uuid.UUID]) -> None:
        with self._cond:
            self._pending[tenant_id] = self._pending.get(tenant_id, 0) + len(message_ids)
            self._cond.notify_all()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="intake-waker", daemon=True)
                self._thread.start()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every wake-up handed over so far was sent (or failed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._sending, timeout)

    @property
    def pending(self) -> int:
        """Tenants waiting for their wake-up to be sent."""
        with self._cond:
            return len(self._pending)

    def close(self, timeout: float = 10.0) -> None:
        """Send what is pending (each send is bounded by the broker's timeouts) and stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            self._closing = False

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._closing:
                    self._cond.wait(self.idle_seconds)
                if not self._pending:
                    self._thread = None
                    self._cond.notify_all()
                    return
                tenant_id, count = next(iter(self._pending.items()))
                del self._pending[tenant_id]
                self._sending += 1
            try:
                wake(self.dispatcher, tenant_id, messages=count)
            finally:
                with self._cond:
                    self._sending -= 1
                    self._cond.notify_all()
