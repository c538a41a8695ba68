"""Where a webhook's body is parsed: never on the event loop, and a large one not even in this
process.

Parsing is pure Python. A small body is parsed on a worker thread. A large one (a 25 MiB email
is seconds of MIME and HTML work) would still hold the GIL for those seconds in slices, and
every other request's thread hand-offs would wait behind them, so it goes to a child process:
other tenants' requests and /healthz are then served at their usual speed while it runs.
The pool starts with the first large body and uses `spawn`, since forking a process that runs
threads is unsafe.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime

from starlette.concurrency import run_in_threadpool

from api.webhook_secrets import SecretUsed, parse_verified
from channels.base import ChannelAdapter, Parsed, RawRequest
from channels.registry import ADAPTERS
from models.tenants import ChannelSecrets

LARGE_BODY_BYTES = 1024 * 1024
PROCESSES = 2


def _parse_in_child(
    route: str, raw: RawRequest, secrets: ChannelSecrets, now: datetime
) -> tuple[Parsed, SecretUsed]:
    [adapter] = [a for a in ADAPTERS if a.route == route]
    return parse_verified(adapter, raw, secrets, now)


class ParsePool:
    def __init__(self, *, processes: int = PROCESSES) -> None:
        self.processes = processes
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=self.processes, mp_context=multiprocessing.get_context("spawn")
                )
            return self._executor

    async def parse(
        self,
        adapter: ChannelAdapter,
        raw: RawRequest,
        secrets: ChannelSecrets,
        now: datetime,
    ) -> tuple[Parsed, SecretUsed]:
        """`parse_verified`, off the event loop; raises what it raises (a ChannelError)."""
        if len(raw.body) <= LARGE_BODY_BYTES:
            return await run_in_threadpool(parse_verified, adapter, raw, secrets, now)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool(), _parse_in_child, adapter.route, raw, secrets, now
        )

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
