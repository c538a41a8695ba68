"""What many tests need: waiting on a condition with a deadline, and real `intake` subprocesses.

Subprocesses run this checkout's code (PYTHONPATH), each in its own session so that teardown
kills it and its children whatever state it is in.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from intake.server import free_port

REPO = Path(__file__).resolve().parents[2]


def wait_for(
    condition: Callable[[], bool], *, timeout: float = 10.0, what: str = "", interval: float = 0.02
) -> float:
    """Poll `condition` until it holds, failing the test after `timeout` s; the seconds it took."""
    start = time.monotonic()
    deadline = start + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)  # polling a condition with the deadline above, not a fixed wait
    return time.monotonic() - start


def intake_env(
    database_url: str, broker_url: str = "", redis_url: str = "", **extra: str
) -> dict[str, str]:
    """The environment of an `intake` subprocess: none of ours inherited, short test timings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_")}
    env["PYTHONPATH"] = str(REPO)
    env["INTAKE_DATABASE_URL"] = database_url
    if broker_url:
        env["INTAKE_BROKER_URL"] = broker_url
    if redis_url:
        env["INTAKE_REDIS_URL"] = redis_url
    env.update(
        {
            "INTAKE_RECONCILE_AFTER_SECONDS": "2",
            "INTAKE_RECONCILE_EVERY_SECONDS": "1",
            "INTAKE_LOCK_LEASE_SECONDS": "5",
            "INTAKE_LOCK_WAIT_SECONDS": "3",
            "INTAKE_MAX_ATTEMPTS": "3",
            "INTAKE_BATCH_SIZE": "50",
        }
    )
    env.update(extra)
    return env


# The name the end-to-end tests know it by: the environment of their workers.
worker_env = intake_env


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class Workers:
    """`intake worker` subprocesses of one test; every one is killed at teardown."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, count: int = 1) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(count):
            log = (self.cwd / f"worker-{len(self.procs)}.log").open("wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "intake", "worker", "--concurrency", "1"],
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.procs.append(proc)
            started.append(proc)
        return started

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        _kill(proc)

    def kill_all(self) -> None:
        for proc in self.procs:
            self.kill(proc)

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.cwd.glob("worker-*.log"))
        )


class ServeProcess:
    """`intake serve` as a process of its own on a free loopback port: another app process."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = cwd / f"serve-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "intake", "serve", "--port", str(self.port)],
            env=env,
            cwd=cwd,
            stdout=self._log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        def answers() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"intake serve exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                return httpx.get(self.url + "/healthz", timeout=2).status_code in (200, 503)
            except httpx.TransportError:
                return False

        wait_for(answers, timeout=timeout, what=f"intake serve on {self.url}", interval=0.1)

    def logs(self) -> str:
        return self._log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        _kill(self.proc)
