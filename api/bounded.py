"""Blocking calls with a deadline, on a few threads of their own.

A PostgreSQL server or a network that accepts and then stays silent escapes every client-side
timeout a driver offers, so the routes that must answer whatever happens (`/healthz`,
`/metrics`) wait for their probe only so long. A probe still stuck keeps its thread; once every
thread is stuck, a new probe fails at once rather than queue behind them, so a long stall holds
a fixed number of threads and never the event loop or the shared thread pool.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ProbeTimeoutError(TimeoutError):
    """The call did not return within its deadline (or every probe thread is still stuck)."""


class BoundedCalls:
    def __init__(self, *, threads: int = 4, name: str = "intake-probe") -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._free = threading.BoundedSemaphore(threads)

    def _submit(self, fn: Callable[[], T]) -> Future[T]:
        if not self._free.acquire(blocking=False):
            raise ProbeTimeoutError("every probe thread is still waiting on an earlier call")

        def run() -> T:
            try:
                return fn()
            finally:
                self._free.release()

        return self._executor.submit(run)

    def call(self, fn: Callable[[], T], *, timeout: float) -> T:
        """`fn()`, or ProbeTimeoutError after `timeout` seconds."""
        future = self._submit(fn)
        try:
            return future.result(timeout)
        except TimeoutError:
            raise ProbeTimeoutError(f"no answer within {timeout} s") from None

    async def acall(self, fn: Callable[[], T], *, timeout: float) -> T:
        """`call` for a coroutine: the event loop is never blocked."""
        future = self._submit(fn)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            raise ProbeTimeoutError(f"no answer within {timeout} s") from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
