"""The Contacts API's body limit, enforced while the body is read (as the webhooks do).

FastAPI reads a whole body before validating it, so a client could make the app buffer any
amount. This ASGI middleware refuses a declared Content-Length over the limit before reading,
and counts the chunks of a body sent without one (or lying about it), failing the read with a
413 once the count passes the limit. A client that hangs up mid-body is logged as an event,
not as an error: it is the client's connection, nothing of ours failed.
"""

from __future__ import annotations

import logging

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import Problem

log = logging.getLogger("intake.api")

MAX_API_BODY = 1024 * 1024


class BodyTooLargeError(HTTPException):
    """An HTTPException, so that FastAPI's body reading passes it on as it is (a 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is over {limit} bytes.")


class BodyLimitMiddleware:
    def __init__(
        self, app: ASGIApp, *, limit: int = MAX_API_BODY, prefixes: tuple[str, ...] = ("/api/",)
    ) -> None:
        self.app = app
        self.limit = limit
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await Problem(413, f"The request body is over {self.limit} bytes.").response()(
                scope, receive, send
            )
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLargeError(self.limit)
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None
