"""Structured logs: one JSON object a line under --log-json, a request id from the webhook to the
worker's lines about the message, and never a secret, an API key, a signature or a message body.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from intake.logs import JsonFormatter
from intake.settings import Settings
from intake.signing import DEMO_SECRETS
from models.db import Database
from models.migrate import upgrade
from models.schema import Message
from tests.factories import make_tenant
from tests.signed import SAMPLES, post_signed, sign_sample
from tests.support import REPO, wait_for
from tests.worker.helpers import drain

# An event is a bare dotted name; what it is about goes in fields, so `--log-json` can query it.
EVENT_NAME = re.compile(r"[a-z_]+(\.[a-z_]+)+")
PACKAGES = ("api", "worker", "models", "channels", "intake")
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}
SIGNATURE_HEADERS = (
    "x-twilio-signature",
    "x-hub-signature-256",
    "x-intake-signature",
    "x-telegram-bot-api-secret-token",
)


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Every log line of the test as the app writes it under --log-json, formatted when emitted
    (so the request id is read in the context that logged it)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Each line parsed on its own: a line that is not one JSON object fails the test."""
    entries = []
    for line in text.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert {"ts", "level", "logger", "event"} <= entry.keys(), line
        entries.append(entry)
    return entries


def test_full_run_logs_request_ids_and_no_secrets_or_bodies(
    db: Database, tmp_path: Path, json_lines: io.StringIO
) -> None:
    """Signed webhooks of every channel, then ingestion: each message's request id is on its
    accept and its ingest line, and no secret, key, signature or body text is logged."""
    settings = Settings(database_url=db.url, broker_url=f"sqla+sqlite:///{tmp_path}/broker.db")
    client = TestClient(create_app(settings, db=db))
    tenant = make_tenant(db, **DEMO_SECRETS)
    never = {*DEMO_SECRETS.values(), tenant.api_key}
    for number, sample in enumerate(SAMPLES):
        signed = sign_sample(sample, tenant.id)
        never.update(v for k, v in signed.headers.items() if k in SIGNATURE_HEADERS)
        if sample["route"] == "email/mailgun":
            form = parse_qs(signed.body.decode())
            never.update(form["signature"] + form["token"])
        assert post_signed(client, signed, **{"x-request-id": f"req-{number}"}) == 200
    forged = sign_sample(SAMPLES[0], tenant.id)
    assert post_signed(client, forged, **{"x-twilio-signature": "forged+signature/value="}) == 403
    never.add("forged+signature/value=")
    assert client.get("/api/v1/contacts", headers=tenant.auth).status_code == 200
    wrong_key = "ik_" + uuid.uuid4().hex
    assert (
        client.get("/api/v1/contacts", headers={"Authorization": f"Bearer {wrong_key}"}).status_code
        == 401
    )
    never.add(wrong_key)
    assert drain(db, tenant.id).handled == 8

    with db.sessions() as session:
        messages = session.execute(
            select(Message.id, Message.request_id, Message.body).where(
                Message.tenant_id == tenant.id
            )
        ).all()
    bodies = {m.body.strip() for m in messages if m.body and m.body.strip()}
    assert len(bodies) >= 6  # the check below would prove nothing without body texts
    text = json_lines.getvalue()
    leaked = [value for value in never | bodies if value in text]
    assert leaked == []

    entries = parse_lines(text)
    accepted = {e.get("request_id") for e in entries if e["event"] == "webhook.accepted"}
    handled = {
        (e.get("request_id"), e["message_id"])
        for e in entries
        if e["event"] == "ingest.message_handled"
    }
    ours = [e for e in entries if e["logger"].split(".")[0] in PACKAGES]
    assert [e["event"] for e in ours if not EVENT_NAME.fullmatch(e["event"])] == []
    assert len(messages) == 8
    for message in messages:
        assert (message.request_id or "").startswith("req-")
        assert message.request_id in accepted
        assert (message.request_id, str(message.id)) in handled
    rejected = [e for e in entries if e["event"] == "webhook.rejected"]
    assert [(e["reason"], e["status"]) for e in rejected] == [("signature", 403)]


def test_log_json_command_writes_one_json_object_a_line(tmp_path: Path) -> None:
    """`intake --log-json migrate` writes only JSON objects, one a line, to stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_")}
    env.update(PYTHONPATH=str(REPO), INTAKE_DATABASE_URL=f"sqlite:///{tmp_path}/intake.db")
    done = subprocess.run(
        [sys.executable, "-m", "intake", "--log-json", "migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    entries = parse_lines(done.stderr)
    assert any(e["logger"].startswith("alembic") for e in entries)


@pytest.mark.e2e
def test_worker_logs_json_with_the_webhooks_request_id(tmp_path: Path) -> None:
    """A real `intake --log-json worker` logs only JSON lines, its ingest line carrying the
    request id the webhook was called with."""
    database_url = f"sqlite:///{tmp_path}/intake.db"
    broker_url = f"sqla+sqlite:///{tmp_path}/broker.db"
    upgrade(database_url)
    db = Database(database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_")}
    env.update(PYTHONPATH=str(REPO), INTAKE_DATABASE_URL=database_url, INTAKE_BROKER_URL=broker_url)
    stderr_path = tmp_path / "worker.stderr"
    stdout_path = tmp_path / "worker.stdout"
    with stderr_path.open("wb") as stderr, stdout_path.open("wb") as stdout:
        worker = subprocess.Popen(
            [sys.executable, "-m", "intake", "--log-json", "worker"],
            env=env,
            cwd=tmp_path,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        tenant = make_tenant(db, **DEMO_SECRETS)
        app = create_app(Settings(database_url=database_url, broker_url=broker_url), db=db)
        signed = sign_sample(SAMPLES[0], tenant.id)
        request_id = "req-" + uuid.uuid4().hex
        assert post_signed(TestClient(app), signed, **{"x-request-id": request_id}) == 200

        def ingest_line_logged() -> bool:
            assert worker.poll() is None, stderr_path.read_text(errors="replace")
            return any(
                "ingest.message_handled" in line and request_id in line
                for line in stderr_path.read_text(errors="replace").splitlines()
            )

        wait_for(ingest_line_logged, timeout=60, what="the worker's ingest line")
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)  # warm shutdown, whose lines are checked too
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=10)
        db.dispose()
    entries = parse_lines(stderr_path.read_text())
    [line] = [e for e in entries if e["event"] == "ingest.message_handled"]
    assert line["request_id"] == request_id
    assert any(e["logger"].startswith("celery") for e in entries)
    # No Celery banner on stdout. Celery's signal handler writes one plain line there on
    # shutdown, straight to sys.__stdout__, past logging: the only non-JSON line left.
    plain = [
        line
        for line in stdout_path.read_text().splitlines()
        if line.strip() and not line.startswith("{")
    ]
    assert plain in ([], ["worker: Warm shutdown (MainProcess)"])


def _log_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in LOG_METHODS
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in {"log", "logger", "logging"}
    ]


def test_every_log_call_names_an_event_and_passes_its_fields_as_fields() -> None:
    """No log call in our packages formats values into its message: one literal event name,
    no %-arguments, no f-string; the values go in `extra=`."""
    offenders = []
    calls = 0
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for call in _log_calls(ast.parse(path.read_text(), str(path))):
                calls += 1
                first = call.args[0] if call.args else None
                literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
                if (
                    len(call.args) != 1 or not literal or not EVENT_NAME.fullmatch(first.value)  # type: ignore[union-attr]
                ):
                    offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert calls >= 18  # the scan would prove nothing if it found no calls
    assert offenders == []


def test_outbound_request_urls_are_not_logged() -> None:
    """httpx's INFO line with a receiver's full URL (and the token in it) is not logged."""
    script = (
        "import logging, httpx\n"
        "from intake.logs import configure_logging\n"
        "configure_logging(json_lines=True)\n"
        "logging.getLogger('httpx').info('HTTP Request: POST https://crm.example.com/h?token=s3cr')\n"
        "logging.getLogger('intake.probe').info('probe.logged')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "s3cr" not in result.stderr
    assert [json.loads(line)["event"] for line in result.stderr.splitlines()] == ["probe.logged"]
