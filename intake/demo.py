"""`intake demo`: the whole pipeline on the embedded defaults, fed the bundled sample webhooks.

It runs in a temporary folder (SQLite database, SQLite broker, in-process lock) so that it
neither needs nor touches anything else, and removes it when done.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from intake.server import BackgroundServer
from intake.settings import Settings
from intake.signing import DEMO_SECRETS, sign_request
from models.db import Database
from models.migrate import upgrade
from models.stats import pipeline_stats
from models.tenants import configure_tenant, create_tenant
from worker.runner import start_embedded_worker

WAIT_SECONDS = 60.0


def load_samples() -> list[dict[str, Any]]:
    text = resources.files("intake").joinpath("samples/webhooks.json").read_text("utf-8")
    samples: list[dict[str, Any]] = json.loads(text)
    return samples


def _payload(sample: dict[str, Any], samples: list[dict[str, Any]]) -> Any:
    if "repeat" in sample:
        return _payload(samples[sample["repeat"]], samples)
    return sample.get("form") or sample.get("json") or sample.get("eml")


def _say(text: str = "") -> None:
    print(text, flush=True)


def run_demo(settings: Settings) -> None:
    folder = Path(tempfile.mkdtemp(prefix="intake-demo-"))
    try:
        _run(settings, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(base: Settings, folder: Path) -> None:
    settings = base.model_copy(
        update={
            "database_url": f"sqlite:///{folder / 'intake.db'}",
            "broker_url": f"sqla+sqlite:///{folder / 'broker.db'}",
            "redis_url": "",
            "public_url": "",
            "reconcile_after_seconds": 5.0,
            "reconcile_every_seconds": 2.0,
        }
    )
    _say("Intake demo: SQLite database, SQLite-backed queue, in-process lock; no servers needed.")
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    with db.unit_of_work() as session:
        new = create_tenant(session, name="Elm Street Lettings", region="US")
        configure_tenant(session, tenant_id=new.tenant.id, values=DEMO_SECRETS)
        tenant_id, api_key = str(new.tenant.id), new.api_key
    _say(f"Tenant 'Elm Street Lettings' ({tenant_id}) with its channel secrets set.\n")

    from api.app import create_app

    worker = start_embedded_worker(settings)
    server = BackgroundServer(create_app(settings, db=db))
    try:
        server.start()
        _post_samples(server.url, tenant_id)
        _wait_for_ingestion(db)
        _report(server.url, api_key)
    finally:
        server.stop()
        worker.stop()
        db.dispose()
    _say("\nDone; nothing is left running. To serve for real on the embedded defaults:")
    _say("    ./run dev        (or: intake migrate && intake dev)")


def _post_samples(url: str, tenant_id: str) -> None:
    samples = load_samples()
    _say(f"Posting {len(samples)} signed webhooks:")
    with httpx.Client(base_url=url, timeout=10) as client:
        for number, sample in enumerate(samples, 1):
            request = sign_request(
                sample["route"],
                _payload(sample, samples),
                base_url=url,
                tenant_id=tenant_id,
                secrets=DEMO_SECRETS,
            )
            response = client.post(request.path, content=request.body, headers=request.headers)
            _say(f"  {number:2}. {sample['route']:<14} {response.status_code}  {sample['note']}")
            if response.status_code >= 300:
                raise RuntimeError(f"the demo's webhook was refused: {response.text}")


def _wait_for_ingestion(db: Database) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    shown = None
    while True:
        with db.sessions() as session:
            stats = pipeline_stats(session)
        done = sum(n for (_, state), n in stats.messages.items() if state != "pending")
        progress = f"{done}/{sum(stats.messages.values())}"
        # A terminal sees the count move on one line; a pipe or a log file gets the end only,
        # not a run of carriage returns.
        if progress != shown and sys.stdout.isatty():
            sys.stdout.write(f"\rIngesting: {progress} messages handled")
            sys.stdout.flush()
            shown = progress
        if stats.pending == 0:
            if not sys.stdout.isatty():
                sys.stdout.write(f"Ingesting: {progress} messages handled")
            _say()
            return
        if time.monotonic() > deadline:
            _say()
            raise RuntimeError(f"{stats.pending} messages still pending after {WAIT_SECONDS:.0f} s")
        time.sleep(0.2)  # polling a condition, with the deadline above


def _report(url: str, api_key: str) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=url, timeout=10, headers=headers) as client:
        contacts = client.get("/api/v1/contacts", params={"limit": 100}).json()["data"]
        counts = {
            c["id"]: client.get(f"/api/v1/contacts/{c['id']}/messages").json()["pagination"][
                "total"
            ]
            for c in contacts
        }
    _say(f"\nContacts made ({len(contacts)}), read back through GET /api/v1/contacts:\n")
    rows = [("name", "phone", "email", "source", "pref", "lang", "msgs")]
    for c in reversed(contacts):  # oldest first reads like the story above
        rows.append(
            (
                c["name"],
                c["phone"] or "",
                c["email"] or "",
                c["source"],
                c["channelPreference"] or "",
                c["language"],
                str(counts[c["id"]]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        _say("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            _say("  " + "  ".join("-" * width for width in widths))
    with httpx.Client(base_url=url, timeout=10) as client:
        families = text_string_to_metric_families(client.get("/metrics").text)
        samples = [sample for family in families for sample in family.samples]
    ignored: Counter[str] = Counter()
    for sample in samples:
        if sample.name == "intake_webhooks_ignored_total":
            ignored[sample.labels["reason"]] += int(sample.value)
    duplicates = sum(int(s.value) for s in samples if s.name == "intake_messages_duplicate_total")
    messages = sum(counts.values())
    _say(
        f"\n{messages} messages made {len(contacts)} contacts: "
        f"{messages - len(contacts)} came from a sender already known by phone, email or "
        "channel id, so they joined that contact."
    )
    _say(f"Deduplicated: {duplicates} redelivered message(s), acknowledged and recorded once.")
    reasons = ", ".join(f"{reason} x{n}" for reason, n in sorted(ignored.items()))
    _say(f"Ignored, not from a person: {reasons or 'none'}.")
