"""`intake demo` as a newcomer runs it: from an empty folder, with nothing configured, it makes the
sample contacts, prints them, and leaves no process and no file behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("Maria Garcia", "João Silva", "Ana Souza", "David Chen", "Jean-François Dübois")


@dataclass(frozen=True)
class DemoRun:
    returncode: int
    stdout: str
    stderr: str
    leftover_processes: list[str]  # "pid cmdline" of each process the demo left running
    cwd_files: list[Path]
    tmp_files: list[Path]


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone since it was listed
        return None
    # Fields after the parenthesised command name: state ppid pgrp session ...
    return int(stat.rsplit(")", 1)[1].split()[3])


def _processes_left(demo_pid: int, folders: tuple[Path, ...]) -> dict[int, str]:
    """Processes of the demo's session, or whose command line names one of its folders."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if _session_of(pid) == demo_pid or any(str(f) in cmdline for f in folders):
            found[pid] = cmdline.strip()
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One run of `python -m intake demo` in an empty folder, INTAKE_* removed from its
    environment and its temporary files kept in a folder of the test's own."""
    cwd = tmp_path_factory.mktemp("newcomer")
    tmp = tmp_path_factory.mktemp("demo-tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_")}
    env.update(PYTHONPATH=str(ROOT), TMPDIR=str(tmp))
    # Its own session, so whatever it starts is found by session id after it exits.
    proc = subprocess.Popen(
        [sys.executable, "-m", "intake", "demo"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=10)
    left = _processes_left(proc.pid, (cwd, tmp))
    for pid in left:  # reported by the test below; never left running after the test run
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return DemoRun(
        proc.returncode,
        stdout,
        stderr,
        [f"{p} {c}" for p, c in left.items()],
        sorted(cwd.rglob("*")),
        sorted(tmp.rglob("*")),
    )


def test_demo_makes_and_prints_the_five_sample_contacts(demo: DemoRun) -> None:
    """From an empty folder with no INTAKE_* set, the demo exits 0 reporting 5 named contacts."""
    assert demo.returncode == 0, demo.stderr
    assert "Contacts made (5)" in demo.stdout
    assert "8 messages made 5 contacts" in demo.stdout
    table = demo.stdout.split("Contacts made (5)")[1]
    for name in NAMES:
        assert name in table
    assert "Traceback" not in demo.stderr


def test_demo_output_to_a_pipe_has_plain_lines(demo: DemoRun) -> None:
    """Piped, the ingestion progress is one finished line, not a run of carriage returns
    (which a text-mode reader turns into one line per step)."""
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.count("Ingesting:") == 1
    assert "Ingesting: 8/8 messages handled\n" in demo.stdout


def test_demo_leaves_no_process_and_no_file_behind(demo: DemoRun) -> None:
    """After the demo exits, nothing it started still runs and neither its working folder nor
    its temporary folder holds a file."""
    assert demo.returncode == 0, demo.stderr
    assert demo.leftover_processes == []
    assert demo.cwd_files == []
    assert demo.tmp_files == []


def test_a_process_left_in_a_session_is_found(tmp_path: Path) -> None:
    """The check above can fail: a child still running in a session, or naming the folder, is
    found."""
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path)], start_new_session=True
    )
    try:
        assert sleeper.pid in _processes_left(sleeper.pid, ())
        assert sleeper.pid in _processes_left(-1, (tmp_path,))
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
