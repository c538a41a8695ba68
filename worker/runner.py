"""Running workers: `intake worker` as its own process, or one inside `intake dev`'s process."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from intake.logs import configure_logging
from intake.settings import Settings
from worker.celery_app import QUEUE, make_celery
from worker.deliveries import DELIVERY_QUEUE, DeliveryPump
from worker.reconciler import ReconcileTimer

log = logging.getLogger(__name__)


def _node_name(kind: str) -> str:
    # Unique per process: two workers on one host must not share a Celery node name.
    return f"intake-{kind}-{os.getpid()}@{socket.gethostname()}"


def _banner_option(settings: Settings) -> list[str]:
    # Celery prints a multi-line ASCII banner on stdout at start; under --log-json every line
    # must be a JSON object (`docker compose logs` mixes stdout and stderr), so it is left out.
    return ["--quiet"] if settings.log_json else []


def run_worker(settings: Settings, *, concurrency: int, deliveries: bool = False) -> None:
    """A Celery worker in this process until it is stopped (SIGTERM: warm shutdown).

    One slot runs the solo pool: no parent process spending CPU on each task. More slots run
    prefork; for throughput, prefer more `intake worker` processes (see performance.md).
    With `deliveries`, it sends outbound webhooks instead, on a pool of threads (the work is
    waiting on receivers), and runs the pump that starts delivery rounds.
    """
    if concurrency < 1:
        raise ValueError("--concurrency takes a whole number of 1 or more")
    if deliveries:
        _run_delivery_worker(settings, concurrency=concurrency)
        return
    # Our handler on the root logger, before Celery starts: with worker_hijack_root_logger off,
    # Celery's own lines go through it too, so `--log-json` covers every line of the worker.
    configure_logging(json_lines=settings.log_json)
    app = make_celery(settings)
    timer = ReconcileTimer(settings, app)
    timer.start()
    argv = [
        *_banner_option(settings),
        "worker",
        f"--hostname={_node_name('worker')}",
        f"--queues={QUEUE}",
        f"--concurrency={concurrency}",
        f"--pool={'solo' if concurrency == 1 else 'prefork'}",
        "--loglevel=INFO",
        # Heartbeats, gossip and mingle cost broker traffic that nothing of ours reads.
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
    ]
    try:
        app.worker_main(argv)
    finally:
        timer.stop()


def _run_delivery_worker(settings: Settings, *, concurrency: int) -> None:
    configure_logging(json_lines=settings.log_json)
    app = make_celery(settings)
    pump = DeliveryPump(settings, app)
    pump.start()
    argv = [
        *_banner_option(settings),
        "worker",
        f"--hostname={_node_name('deliveries')}",
        f"--queues={DELIVERY_QUEUE}",
        f"--concurrency={concurrency}",
        "--pool=threads",
        "--loglevel=INFO",
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
    ]
    try:
        app.worker_main(argv)
    finally:
        pump.stop()


class EmbeddedWorker:
    """A solo-pool worker on a thread of this process, with its reconcile timer."""

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings)
        self._controller: Any = self.app.WorkController(
            hostname=_node_name("embedded"),
            pool_cls="solo",
            concurrency=1,
            # One process for development: deliveries share the solo slot.
            queues=[QUEUE, DELIVERY_QUEUE],
            without_heartbeat=True,
            without_gossip=True,
            without_mingle=True,
            loglevel=logging.INFO,
        )
        self._thread = threading.Thread(
            target=self._run, name="intake-embedded-worker", daemon=True
        )
        self._timer = ReconcileTimer(settings, self.app)
        self._pump = DeliveryPump(settings, self.app)

    def _run(self) -> None:
        # The pool looks tasks up on the thread's current app, which must be ours, not the
        # process-wide default.
        self.app.set_current()
        self._controller.start()

    def start(self) -> EmbeddedWorker:
        self._thread.start()
        self._timer.start()
        self._pump.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._timer.stop()
        self._pump.stop()
        self._controller.stop(in_sighandler=False)
        self._thread.join(timeout=timeout)


def start_embedded_worker(settings: Settings) -> EmbeddedWorker:
    """A worker inside the current process, for `intake dev`; call `.stop()` to end it."""
    return EmbeddedWorker(settings).start()
