"""`intake dev`: the HTTP app and a worker in one process, on the embedded defaults."""

from __future__ import annotations

import uvicorn

from api.app import create_app
from intake.settings import Settings
from models.migrate import upgrade
from worker.runner import start_embedded_worker


def run_dev(settings: Settings, *, host: str, port: int) -> None:
    # Development should start from nothing: the embedded schema is made or upgraded here.
    upgrade(settings.database_url)
    worker = start_embedded_worker(settings)
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_config=None)
    finally:
        worker.stop()
