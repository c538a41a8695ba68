"""Group commit for webhook accepts: the accepts waiting at a moment share one transaction.

One commit (and one wake-up per tenant) per request made the database round trips, the commit
and the thread hand-off most of a webhook's cost. Here one thread takes every accept that is
waiting, stores them with `accept_batch`, and hands each its own outcome. Nothing waits for a
batch to fill: at low load a batch is the one request that came, so latency does not grow;
under load requests queue while the previous batch commits, and the next batch takes them all.

A waiting request is answered only after the commit that holds its rows, as with `accept`.
The thread starts with the first accept and ends after a second idle (or on `close`), so an
app that is never shut down leaves no thread behind for long.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from channels.base import InboundMessage
from models.db import Database
from worker.accept import AcceptRequest, AcceptResult, store_accepted
from worker.dispatch import Dispatcher
from worker.waker import Waker

log = logging.getLogger(__name__)

MAX_BATCH_MESSAGES = 200  # one multi-row INSERT of this size is still a few milliseconds
IDLE_SECONDS = 1.0


@dataclass
class _Waiting:
    request: AcceptRequest
    future: Future[AcceptResult] = field(default_factory=Future)


class AcceptBatcher:
    """Accepts many requests' messages in shared transactions on one thread of its own."""

    def __init__(
        self,
        db: Database,
        dispatcher: Dispatcher,
        *,
        max_batch_messages: int = MAX_BATCH_MESSAGES,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.db = db
        self.dispatcher = dispatcher
        self.waker = Waker(dispatcher)
        self.max_batch_messages = max_batch_messages
        self.idle_seconds = idle_seconds
        self.batches = 0  # transactions run, for tests and logs
        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        # Guards `_thread` with the queue's contents: a request is queued and the thread checked
        # under it, and the thread retires under it only when nothing is queued.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the batching thread is alive (it retires when idle)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def submit(
        self,
        *,
        tenant_id: uuid.UUID,
        messages: Sequence[InboundMessage],
        nonce: tuple[str, str] | None = None,
        request_id: str | None = None,
    ) -> Future[AcceptResult]:
        """Queue an accept; the future holds what `accept` would return or raise."""
        waiting = _Waiting(AcceptRequest(tenant_id, messages, nonce, request_id))
        with self._lock:
            self._queue.put(waiting)
            # Not alive would be a bug of ours that killed it: a new thread serves the queue.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="intake-accept-batcher", daemon=True
                )
                self._thread.start()
        return waiting.future

    async def accept(
        self,
        *,
        tenant_id: uuid.UUID,
        messages: Sequence[InboundMessage],
        nonce: tuple[str, str] | None = None,
        request_id: str | None = None,
    ) -> AcceptResult:
        """`accept` for a coroutine: waits, without a thread of its own, for its batch."""
        future = self.submit(
            tenant_id=tenant_id, messages=messages, nonce=nonce, request_id=request_id
        )
        return await asyncio.wrap_future(future)

    def close(self, timeout: float = 10.0) -> None:
        """Finish what is queued and stop the thread; a later submit starts a new one."""
        with self._lock:
            thread = self._thread
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join(timeout)
        self.waker.close(timeout)

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.idle_seconds)
            except queue.Empty:
                first = None
            if first is None:  # idle, or asked to stop
                with self._lock:
                    leftovers = self._take_all()
                    if not leftovers:
                        self._thread = None
                        return
                self._run_batch(leftovers)
                continue
            batch = [first]
            size = len(first.request.messages)
            while size < self.max_batch_messages:
                try:
                    waiting = self._queue.get_nowait()
                except queue.Empty:
                    break
                if waiting is None:  # a stop: honoured once this batch is done
                    self._queue.put(None)
                    break
                batch.append(waiting)
                size += len(waiting.request.messages)
            self._run_batch(batch)

    def _take_all(self) -> list[_Waiting]:
        taken: list[_Waiting] = []
        while True:
            try:
                waiting = self._queue.get_nowait()
            except queue.Empty:
                return taken
            if waiting is not None:
                taken.append(waiting)

    def _run_batch(self, batch: list[_Waiting]) -> None:
        # A request whose caller gave up (a client gone, its task cancelled) before the batch
        # took it is not stored: no answer was sent, so the provider retries. Once running, a
        # future can no longer be cancelled, so setting its outcome below cannot fail.
        batch = [w for w in batch if w.future.set_running_or_notify_cancel()]
        if not batch:
            return
        woken: dict[uuid.UUID, list[uuid.UUID]] = {}
        try:
            outcomes, woken = store_accepted(
                self.db, self.dispatcher, requests=[w.request for w in batch]
            )
        except Exception as exc:  # store_accepted hands errors back; this is a bug of ours
            log.exception("accept.batcher_failed", extra={"requests": len(batch)})
            outcomes = [exc] * len(batch)
        self.batches += 1
        # The rows are committed: their wake-ups go to the waker's thread (handing them over
        # never blocks), so a stalled broker delays neither these answers nor the next commit.
        for tenant_id, new_ids in woken.items():
            self.waker.wake_later(tenant_id, new_ids)
        for waiting, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                waiting.future.set_exception(outcome)
            else:
                waiting.future.set_result(outcome)
