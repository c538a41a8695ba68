"""The spool on its own: append and fsync, drain into the inbox once and in order, adopt the
segments of a process that died, burn a spooled token at drain time, refuse when unwritable."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from intake.settings import Settings
from models.db import Database
from models.schema import Message, WebhookNonce
from tests.factories import make_tenant
from tests.worker.helpers import inbound, store
from tests.worker.test_end_to_end import wait_for
from worker.celery_app import make_celery
from worker.dispatch import Dispatcher
from worker.spool import Spool, SpoolUnavailableError
from worker.waker import Waker


@pytest.fixture
def waker(tmp_path: Path) -> Waker:
    """A waker on an embedded broker of the test's own (wake-ups are not under test here)."""
    settings = Settings(broker_url=f"sqla+sqlite:///{tmp_path}/broker.db")
    return Waker(Dispatcher(settings, make_celery(settings)))


def provider_ids(db: Database, tenant_id: uuid.UUID) -> list[str]:
    with db.sessions() as session:
        return sorted(
            session.scalars(
                select(Message.provider_message_id).where(Message.tenant_id == tenant_id)
            )
        )


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool"))


def test_spooled_messages_move_into_the_inbox_exactly_once(
    db: Database, tmp_path: Path, waker: Waker
) -> None:
    """Spooled requests land once each, in order, beside a message the inbox already had and a
    repeat across records; the segment is removed after the commit and the depth is 0."""
    tenant = make_tenant(db)
    already = inbound("sms", phone="+14155550101", provider_message_id="SM-already")
    store(db, tenant.id, already)
    spool = Spool(tmp_path / "spool", db, waker, background=False)
    first = inbound("sms", phone="+14155550102", provider_message_id="SM-1")
    second = inbound("sms", phone="+14155550103", provider_message_id="SM-2")
    for messages in ([first, already], [second], [first]):
        spool.append(tenant_id=tenant.id, messages=messages, nonce=None, request_id="r")
    assert spool.stats().depth == 4
    assert len(segments(tmp_path / "spool")) == 1
    assert spool.drain_now() == 4
    assert provider_ids(db, tenant.id) == ["SM-1", "SM-2", "SM-already"]
    assert segments(tmp_path / "spool") == []
    assert (spool.stats().depth, spool.holding) == (0, False)
    assert waker.wait_idle(10)


def test_a_drain_redone_after_a_crash_adds_nothing(
    db: Database, tmp_path: Path, waker: Waker
) -> None:
    """A segment drained and committed but not yet removed (a crash in between) is drained
    again by the next process without a second copy of anything."""
    tenant = make_tenant(db)
    directory = tmp_path / "spool"
    crashed = Spool(directory, db, waker, background=False)
    message = inbound("sms", phone="+14155550104")
    crashed.append(
        tenant_id=tenant.id, messages=[message], nonce=("email/mailgun", "t1"), request_id=None
    )
    [segment] = segments(directory)
    kept = segment.read_bytes()
    crashed.drain_now()
    segment.write_bytes(kept)  # as if the process died between its commit and the unlink
    successor = Spool(directory, db, waker, background=False)
    successor.start()  # adopts the segment left behind
    assert successor.drain_now() == 1
    assert provider_ids(db, tenant.id) == [message.provider_message_id]
    assert segments(directory) == []


def test_a_live_process_segment_is_not_adopted_but_a_dead_one_is(
    db: Database, tmp_path: Path, waker: Waker
) -> None:
    """Another process's spool is left alone while it holds its lock; once its file is closed
    (the process died), the next drainer adopts and drains it."""
    tenant = make_tenant(db)
    directory = tmp_path / "spool"
    owner = Spool(directory, db, waker, background=False)
    message = inbound("email", email="a@example.com")
    owner.append(tenant_id=tenant.id, messages=[message], nonce=None, request_id=None)
    other = Spool(directory, db, waker, background=False)
    assert other._adopt_orphans() is False
    assert other.stats().depth == 0
    for segment in owner._segments:  # what the kernel does when the owner dies
        segment.file.close()
    assert other._adopt_orphans() is True
    assert other.stats().depth == 1
    assert other.drain_now() == 1
    assert provider_ids(db, tenant.id) == [message.provider_message_id]


def test_a_torn_last_record_is_skipped(db: Database, tmp_path: Path, waker: Waker) -> None:
    """A half-written last line (never fsynced, so never acknowledged) is skipped; the records
    before it are drained."""
    tenant = make_tenant(db)
    directory = tmp_path / "spool"
    spool = Spool(directory, db, waker, background=False)
    message = inbound("sms", phone="+14155550105")
    spool.append(tenant_id=tenant.id, messages=[message], nonce=None, request_id=None)
    [segment] = segments(directory)
    with segment.open("ab") as file:
        file.write(b'{"tenant_id": "')
    assert spool.drain_now() == 1
    assert provider_ids(db, tenant.id) == [message.provider_message_id]


def test_a_spooled_token_is_burnt_at_drain_and_its_replay_dropped(
    db: Database, tmp_path: Path, waker: Waker
) -> None:
    """Two spooled requests with one Mailgun token: the first is stored and burns it, the
    replay is dropped when the spool drains."""
    tenant = make_tenant(db)
    spool = Spool(tmp_path / "spool", db, waker, background=False)
    original, replayed = inbound("email", email="b@example.com"), inbound("email", email="c@x.io")
    for message in (original, replayed):
        spool.append(
            tenant_id=tenant.id, messages=[message], nonce=("email/mailgun", "tok"), request_id=None
        )
    spool.drain_now()
    assert provider_ids(db, tenant.id) == [original.provider_message_id]
    with db.sessions() as session:
        assert session.scalars(
            select(WebhookNonce.value).where(WebhookNonce.tenant_id == tenant.id)
        ).all() == ["tok"]


def test_an_unwritable_or_unconfigured_spool_refuses(
    db: Database, tmp_path: Path, waker: Waker
) -> None:
    """No spool directory, or one that cannot be made, raises SpoolUnavailableError."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for directory in (None, blocker / "spool"):
        spool = Spool(directory, db, waker, background=False)
        with pytest.raises(SpoolUnavailableError):
            spool.append(tenant_id=uuid.uuid4(), messages=[inbound()], nonce=None, request_id=None)
        assert spool.stats().depth == 0


def test_the_background_drainer_empties_the_spool(
    db: Database, tmp_path: Path, waker: Waker
) -> None:
    """Without being asked, the spool's own thread moves what was appended into the inbox."""
    tenant = make_tenant(db)
    spool = Spool(tmp_path / "spool", db, waker)
    messages = [inbound("sms", phone=f"+1415555{n:04d}") for n in range(5)]
    for message in messages:
        spool.append(tenant_id=tenant.id, messages=[message], nonce=None, request_id=None)
    wait_for(lambda: not spool.holding, timeout=20, what="the spool to drain")
    spool.close()
    assert provider_ids(db, tenant.id) == sorted(m.provider_message_id for m in messages)
    assert segments(tmp_path / "spool") == []


FULL_DISK_SCRIPT = """
import resource, signal, sys, uuid
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
from models.db import Database
from tests.worker.helpers import inbound
from worker.spool import Spool, SpoolUnavailableError
directory = Path(sys.argv[1])
spool = Spool(directory, Database("sqlite://"), None, background=False)
spool.append(tenant_id=uuid.uuid4(), messages=[inbound(text="small")], nonce=None, request_id=None)
size = next(directory.glob("*.spool")).stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 1000, size + 1000))
try:
    spool.append(tenant_id=uuid.uuid4(), messages=[inbound(text="x" * 5000)], nonce=None,
                 request_id=None)
except SpoolUnavailableError:
    print("refused", spool.stats().depth, next(directory.glob("*.spool")).stat().st_size == size)
"""


def test_a_full_disk_refuses_and_leaves_no_torn_record(tmp_path: Path, repo_root: Path) -> None:
    """A record the disk cannot take (a file size limit stands in for a full disk) raises
    SpoolUnavailableError, leaves the depth as it was, and is cut off the file, so the next
    record starts on a line of its own."""
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(tmp_path / "spool")],
        cwd=repo_root,
        env={**os.environ, "PYTHONPATH": str(repo_root)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.split() == ["refused", "1", "True"], result.stderr
