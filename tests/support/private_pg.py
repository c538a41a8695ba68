"""A PostgreSQL cluster of a test's own, to stop for real: the shared server is never touched.

initdb and pg_ctl from the PostgreSQL install run as the `postgres` user (the server refuses to
run as root), in a temporary directory that user owns, on a free loopback port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psycopg
import pytest

PG_BIN = Path(os.environ.get("INTAKE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class PrivatePostgres:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self.log = root / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/intake"

    def _as_postgres(self, *args: str, timeout: float = 60) -> None:
        command = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
        subprocess.run(command, check=True, capture_output=True, timeout=timeout)

    def init(self) -> None:
        self._as_postgres(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def answers(self) -> bool:
        try:
            with psycopg.connect(
                f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", connect_timeout=2
            ):
                return True
        except psycopg.OperationalError:
            return False

    def wait_until_answering(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.answers():
            if time.monotonic() > deadline:
                pytest.fail(f"the private PostgreSQL did not answer in {timeout}s")
            time.sleep(0.1)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started cluster with an `intake` database, stopped and removed at the end."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"no initdb in {PG_BIN}; set INTAKE_TEST_PG_BIN", pytrace=False)
    root = Path(tempfile.mkdtemp(prefix="intake-pg-"))
    if os.geteuid() == 0:  # initdb runs as postgres, which must own its directory
        shutil.chown(root, "postgres")
    cluster = PrivatePostgres(root, free_port())
    try:
        cluster.init()
        cluster.start()
        with psycopg.connect(
            f"host=127.0.0.1 port={cluster.port} user=postgres dbname=postgres", autocommit=True
        ) as admin:
            admin.execute("CREATE DATABASE intake")
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            with suppress(subprocess.SubprocessError):
                cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
