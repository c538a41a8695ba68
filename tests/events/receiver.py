"""A webhook receiver for tests: a small ASGI app under uvicorn on 127.0.0.1 that verifies
every request with `standardwebhooks` and answers by script (status, Retry-After, a delay)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Answer:
    status: int = 200
    delay: float = 0.0  # seconds before answering: a slow receiver
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Received:
    headers: dict[str, str]
    body: dict[str, Any]
    verified_by: list[int]  # indexes of the secrets whose signature matched
    status: int


@dataclass
class Receiver:
    """Requests received, in arrival order; `script` answers first, then `default`."""

    secrets: list[str] = field(default_factory=list)
    script: deque[Answer] = field(default_factory=deque)
    default: Answer = field(default_factory=Answer)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        verified = []
        for index, secret in enumerate(self.secrets):
            try:
                Webhook(secret).verify(raw, headers)
                verified.append(index)
            except WebhookVerificationError:
                pass
        with self.lock:
            answer = self.script.popleft() if self.script else self.default
        if answer.delay:
            await asyncio.sleep(answer.delay)
        with self.lock:
            self.received.append(Received(headers, json.loads(raw), verified, answer.status))
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [(k.encode(), v.encode()) for k, v in answer.headers],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    def ids(self, *, status: int | None = None) -> list[str]:
        with self.lock:
            return [r.body["id"] for r in self.received if status is None or r.status == status]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ReceiverServer:
    """Serves a Receiver on a fixed port; stop() and start() again to be down for a while."""

    def __init__(self, receiver: Receiver, port: int | None = None) -> None:
        self.receiver = receiver
        self.port = port or free_port()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> ReceiverServer:
        config = uvicorn.Config(
            self.receiver,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            log_config=None,
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        server = self._server
        wait_until(lambda: server.started, timeout=10, what="the receiver to start")
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = None


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
