"""The Contacts API's deadline: a handler stuck on a silent dependency is answered 503 in time,
and its late answer is dropped; a response under way or a quick one is left alone."""

from __future__ import annotations

import threading
import time

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.deadline import DeadlineMiddleware


def stuck_app(release: threading.Event) -> FastAPI:
    app = FastAPI()

    @app.get("/api/v1/stuck")
    def stuck() -> dict[str, str]:  # a sync handler, on a worker thread, as ours are
        release.wait(30)
        return {"late": "answer"}

    @app.get("/api/v1/quick")
    def quick() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/elsewhere")
    def elsewhere() -> dict[str, str]:
        release.wait(30)
        return {"not": "limited"}

    app.add_middleware(DeadlineMiddleware, seconds=0.5)
    return app


def test_a_stuck_handler_is_503_within_the_deadline() -> None:
    """A handler blocked past the deadline yields a 503 problem with Retry-After at about the
    deadline, not when (or if) the handler returns."""
    release = threading.Event()
    client = TestClient(stuck_app(release))
    started = time.monotonic()
    response = client.get("/api/v1/stuck")
    elapsed = time.monotonic() - started
    release.set()
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "5"
    assert 0.4 < elapsed < 5


def test_quick_handlers_and_other_paths_are_untouched() -> None:
    """A handler that answers in time is served as usual; paths outside /api/ have no deadline."""
    release = threading.Event()
    client = TestClient(stuck_app(release))
    assert client.get("/api/v1/quick").json() == {"ok": "yes"}
    threading.Timer(1.0, release.set).start()
    response = client.get("/elsewhere")
    assert (response.status_code, response.json()) == (200, {"not": "limited"})
