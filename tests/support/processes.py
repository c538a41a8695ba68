"""Real `intake serve` and `intake worker` processes for fault tests, killed at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.private_pg import free_port

REPO = Path(__file__).resolve().parents[2]


def intake_env(**settings: str) -> dict[str, str]:
    """This environment without any INTAKE_ setting, then `settings` as INTAKE_<NAME>."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_")}
    env["PYTHONPATH"] = str(REPO)
    env.update({f"INTAKE_{name.upper()}": value for name, value in settings.items()})
    return env


class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "intake", *args],
            env=env,
            cwd=self.logs,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def serve(self, env: dict[str, str], name: str = "app") -> str:
        """An `intake serve` on a free port; its base URL once /healthz answers at all."""
        port = free_port()
        proc = self.spawn(name, ["serve", "--port", str(port)], env)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base + "/healthz", timeout=5)
                return base
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{name} did not start:\n{self.tail(name)}")
                time.sleep(0.05)

    def worker(self, env: dict[str, str], name: str = "worker") -> subprocess.Popen[bytes]:
        return self.spawn(name, ["worker", "--concurrency", "1"], env)

    def tail(self, name: str, chars: int = 4000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
