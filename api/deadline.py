"""A deadline on Contacts API requests: a stalled database answers 503, not never.

The API's handlers are synchronous and run on worker threads; a PostgreSQL that accepts and then
stays silent holds such a thread past every timeout the driver has. This ASGI middleware waits
for the handler only until DEADLINE_SECONDS: if no response has started by then, the client gets
a 503 problem (retry later) and the handler's eventual answer is dropped. Its transaction may
still commit when the database wakes up, as after any lost reply: a create the client retries is
then a 409 naming the contact, and with an Idempotency-Key the retry replays it.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import Problem

log = logging.getLogger("intake.api")

DEADLINE_SECONDS = 10.0


class DeadlineMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        seconds: float = DEADLINE_SECONDS,
        prefixes: tuple[str, ...] = ("/api/",),
    ) -> None:
        self.app = app
        self.seconds = seconds
        self.prefixes = prefixes
        self._abandoned: set[asyncio.Task[None]] = set()  # kept referenced until they end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        started = False
        expired = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if expired:
                return  # we answered for it already
            started = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        done, _ = await asyncio.wait({task}, timeout=self.seconds)
        if done:
            task.result()
            return
        if started:  # a response is under way: let it finish, however slowly
            await task
            return
        expired = True
        # Not awaited: a handler blocked in a thread cannot be cancelled, only abandoned.
        self._abandoned.add(task)
        task.add_done_callback(self._forget)
        task.cancel()
        log.warning(
            "request.deadline_exceeded",
            extra={
                "method": scope.get("method"),
                "path": scope.get("path"),
                "seconds": self.seconds,
            },
        )
        problem = Problem(
            503,
            f"No answer within {self.seconds:.0f} s (a dependency does not answer); retry shortly.",
            slug="unavailable",
            headers={"Retry-After": "5"},
        )
        await problem.response()(scope, receive, send)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("request.abandoned_failed", extra={"error": type(task.exception()).__name__})
