"""The durable spool: verified webhooks kept on local disk while the database cannot take them.

When PostgreSQL is down or stalled, a webhook's messages are appended to a segment file here and
fsynced before the 2xx, so the answer still means "durably accepted". When the database answers
again, a drainer thread moves the segments into the inbox, oldest first and in order, through
the same `store_batch` the webhooks use, so the unique (tenant, channel, provider id) makes each
message land exactly once, whatever a crash between the commit and the file's removal replays.
A segment is removed only after the commits that hold all of its records. A Mailgun token
spooled with its request is burnt at drain time: a replay that came in meanwhile is dropped then.

Each app process keeps its own segments (named with its pid and a random token) and holds an
exclusive `flock` on each until it is drained, so processes sharing a directory never drain one
segment twice at once; a segment whose process died is unlocked, and the next drainer adopts it.

File format: one JSON object a line, `{"tenant_id", "request_id", "nonce", "spooled_at",
"messages"}`. Each record is written with one `write` and then fsynced; a torn last line can only
be a record that was never acknowledged, and is skipped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from channels.base import InboundMessage
from models.db import Database
from worker.accept import AcceptRequest, NonceReplayedError, store_batch
from worker.waker import Waker

log = logging.getLogger(__name__)

SUFFIX = ".spool"
DRAIN_BATCH_MESSAGES = 200
RETRY_SECONDS = 1.0  # a drain that failed (the database still down) is tried again after this
IDLE_SECONDS = 2.0  # the drainer thread retires after this long with nothing spooled


class SpoolUnavailableError(Exception):
    """The spool is not configured or cannot be written (disk full, not writable)."""


@dataclass
class _Segment:
    path: Path
    file: IO[bytes]  # open for append, flock held until the segment is removed
    messages: int = 0
    oldest: float | None = None  # time.time() of its first record
    sealed: bool = False  # no more appends: ready to drain


@dataclass(frozen=True)
class SpoolStats:
    depth: int  # spooled messages not yet in the database
    oldest_age_seconds: float


class Spool:
    """This process's spool segments in `directory`, and the thread that drains them."""

    def __init__(
        self,
        directory: str | Path | None,
        db: Database,
        waker: Waker,
        *,
        retry_seconds: float = RETRY_SECONDS,
        background: bool = True,
    ) -> None:
        """`background=False` leaves draining to `drain_now` (tests that step it by hand)."""
        self.directory = Path(directory) if directory else None
        self.db = db
        self.waker = waker
        self.retry_seconds = retry_seconds
        self.background = background
        self._token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()  # guards the segments and the thread
        self._segments: list[_Segment] = []
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self.drained = 0  # messages moved into the database by this process, for tests and logs

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def stats(self) -> SpoolStats:
        with self._lock:
            depth = sum(s.messages for s in self._segments)
            oldest = min((s.oldest for s in self._segments if s.oldest is not None), default=None)
        return SpoolStats(depth, 0.0 if oldest is None else max(0.0, time.time() - oldest))

    @property
    def holding(self) -> bool:
        """Whether messages are waiting here: new ones then join the queue behind them."""
        with self._lock:
            return any(s.messages for s in self._segments)

    # Appending, on the webhook's path

    def append(
        self,
        *,
        tenant_id: uuid.UUID,
        messages: Sequence[InboundMessage],
        nonce: tuple[str, str] | None,
        request_id: str | None,
    ) -> None:
        """Append one request's messages and fsync them; raises SpoolUnavailableError."""
        if self.directory is None:
            raise SpoolUnavailableError("no spool directory is configured")
        record = {
            "tenant_id": str(tenant_id),
            "request_id": request_id,
            "nonce": list(nonce) if nonce else None,
            "spooled_at": time.time(),
            "messages": [m.to_json() for m in messages],
        }
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        with self._lock:
            try:
                segment = self._open_segment()
                position = segment.file.tell()
                try:
                    segment.file.write(line)
                    segment.file.flush()
                    os.fsync(segment.file.fileno())
                except OSError:
                    # A partial line would be read as a torn record; cut it off so that the
                    # next record starts on a line of its own.
                    segment.file.truncate(position)
                    raise
            except OSError as exc:
                raise SpoolUnavailableError(f"the spool cannot be written ({exc})") from exc
            segment.messages += len(messages)
            if segment.oldest is None:
                segment.oldest = record["spooled_at"]  # type: ignore[assignment]
            self._ensure_thread()
        log.info(
            "spool.appended",
            extra={
                "tenant_id": str(tenant_id),
                "messages": len(messages),
                "segment": segment.path.name,
            },
        )

    def _open_segment(self) -> _Segment:
        if self._segments and not self._segments[-1].sealed:
            return self._segments[-1]
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{time.time_ns():020d}-{self._token}{SUFFIX}"
        file = path.open("ab")
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        _fsync_directory(self.directory)  # the new name itself must survive a crash
        segment = _Segment(path, file)
        self._segments.append(segment)
        return segment

    # Draining, on a thread of its own

    def start(self) -> None:
        """Adopt segments left by processes that died, and drain them (call at startup)."""
        with self._lock:
            if self._adopt_orphans():
                self._ensure_thread()

    def _ensure_thread(self) -> None:
        if not self.background:
            return
        if self._thread is None or not self._thread.is_alive():
            self._closing.clear()
            self._thread = threading.Thread(target=self._run, name="intake-spool", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the drainer; what is still spooled stays on disk for the next start."""
        self._closing.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        idle_since = time.monotonic()
        while not self._closing.is_set():
            with self._lock:
                self._adopt_orphans()
                if not any(s.messages for s in self._segments):
                    if time.monotonic() - idle_since > IDLE_SECONDS:
                        self._thread = None
                        return
                    waiting = True
                else:
                    waiting = False
                    # Seal the open segment: new appends go to a fresh one behind it, and the
                    # sealed ones are drained in the order they were written.
                    for segment in self._segments:
                        segment.sealed = True
                    batch = list(self._segments)
            if waiting:
                self._closing.wait(0.2)
                continue
            try:
                for segment in batch:
                    self._drain_segment(segment)
            except Exception as exc:  # the database still down: keep everything, try again
                log.warning("spool.drain_failed", extra={"error": type(exc).__name__})
                self._closing.wait(self.retry_seconds)
            idle_since = time.monotonic()

    def drain_now(self) -> int:
        """Drain every sealed and open segment in this thread; for tests and shutdown."""
        with self._lock:
            for segment in self._segments:
                segment.sealed = True
            batch = list(self._segments)
        before = self.drained
        for segment in batch:
            self._drain_segment(segment)
        return self.drained - before

    def _drain_segment(self, segment: _Segment) -> None:
        records = list(_read_records(segment.path))
        for chunk in _chunks(records, DRAIN_BATCH_MESSAGES):
            requests = [_request_of(record) for record in chunk]
            with self.db.unit_of_work() as session:
                outcomes = store_batch(session, requests=requests)
            # Committed: wake the drains; a record already stored (a late commit of the request
            # the spool stood in for, or a drain redone after a crash) is a no-op above.
            woken: dict[uuid.UUID, list[uuid.UUID]] = {}
            for request, outcome in zip(requests, outcomes, strict=True):
                if isinstance(outcome, NonceReplayedError):
                    log.info(
                        "spool.replay_dropped",
                        extra={
                            "tenant_id": str(request.tenant_id),
                            "request_id": request.request_id,
                        },
                    )
                    continue
                if outcome:
                    woken.setdefault(request.tenant_id, []).extend(outcome)
            for tenant_id, ids in woken.items():
                self.waker.wake_later(tenant_id, ids)
            count = sum(len(r.messages) for r in requests)
            self.drained += count
        with self._lock:
            self._segments.remove(segment)
            segment.path.unlink(missing_ok=True)
            segment.file.close()  # releases the flock, after the name is gone
        log.info(
            "spool.drained",
            extra={
                "segment": segment.path.name,
                "messages": segment.messages,
                "records": len(records),
            },
        )

    def _adopt_orphans(self) -> bool:
        """Take over segments no live process holds (their writer died); True if any."""
        if self.directory is None or not self.directory.is_dir():
            return False
        own = {s.path for s in self._segments}
        adopted = False
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            if path in own:
                continue
            try:
                file = path.open("ab")
            except OSError:
                continue
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live process holds it
                file.close()
                continue
            if not path.exists():  # drained and removed between our glob and our lock
                file.close()
                continue
            records = list(_read_records(path))
            segment = _Segment(
                path,
                file,
                messages=sum(len(r["messages"]) for r in records),
                oldest=min((float(r["spooled_at"]) for r in records), default=time.time()),
                sealed=True,
            )
            self._segments.append(segment)
            self._segments.sort(key=lambda s: s.path.name)
            adopted = True
            log.info("spool.adopted", extra={"segment": path.name, "messages": segment.messages})
        return adopted


def _read_records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as file:
        for line in file:
            if not line.endswith(b"\n"):
                return  # a torn last record: never fsynced, so never acknowledged
            try:
                yield json.loads(line)
            except ValueError:
                log.warning("spool.unreadable_record", extra={"segment": path.name})


def _request_of(record: dict[str, Any]) -> AcceptRequest:
    nonce = record.get("nonce")
    return AcceptRequest(
        tenant_id=uuid.UUID(record["tenant_id"]),
        messages=tuple(InboundMessage.from_json(m) for m in record["messages"]),
        nonce=(nonce[0], nonce[1]) if nonce else None,
        request_id=record.get("request_id"),
    )


def _chunks(records: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    count = 0
    for record in records:
        chunk.append(record)
        count += max(1, len(record["messages"]))
        if count >= size:
            yield chunk
            chunk, count = [], 0
    if chunk:
        yield chunk


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
