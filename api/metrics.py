"""Prometheus metrics: webhook counters of this process, pipeline figures from the database.

Webhook traffic is counted where it happens. What the workers do (ingested, failed, contacts
created and merged, queue depth and age) is read from the database at scrape time, so it is
right however many worker processes there are and whichever app process is scraped.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from api.bounded import BoundedCalls, ProbeTimeoutError
from models.db import Database
from models.stats import PipelineStats, pipeline_stats
from worker.spool import Spool

# A scrape must answer even with the database stalled: the pipeline figures wait this long.
STATS_TIMEOUT_SECONDS = 3.0


class _PipelineCollector(Collector):
    def __init__(self, db: Database, probes: BoundedCalls) -> None:
        self.db = db
        self.probes = probes

    def _stats(self) -> PipelineStats:
        with self.db.sessions() as session:
            return pipeline_stats(session)

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self.probes.call(self._stats, timeout=STATS_TIMEOUT_SECONDS)
        except (SQLAlchemyError, ProbeTimeoutError):
            # A scrape while the database is down still serves this process's own counters,
            # and says why the pipeline figures are missing.
            yield GaugeMetricFamily("intake_database_up", "The database answered", value=0)
            return
        yield GaugeMetricFamily("intake_database_up", "The database answered", value=1)
        messages = GaugeMetricFamily(
            "intake_messages", "Inbound messages by channel and state", labels=["channel", "state"]
        )
        ingested = CounterMetricFamily(
            "intake_messages_ingested", "Messages ingested into a contact", labels=["channel"]
        )
        failed = GaugeMetricFamily(
            "intake_messages_failed", "Messages parked as failed", labels=["channel"]
        )
        for (channel, state), count in sorted(stats.messages.items()):
            messages.add_metric([channel, state], count)
            if state == "handled":
                ingested.add_metric([channel], count)
            elif state == "failed":
                failed.add_metric([channel], count)
        created = CounterMetricFamily(
            "intake_contacts_created", "Contacts created from inbound messages", labels=["source"]
        )
        for source, count in sorted(stats.contacts_by_source.items()):
            created.add_metric([source], count)
        merged = CounterMetricFamily(
            "intake_contacts_merged",
            "Contacts merged into another, by an attested link or through the API",
            labels=["how"],
        )
        for how, count in sorted(stats.merges_by_how.items()):
            merged.add_metric([how], count)
        yield merged
        yield messages
        yield ingested
        yield failed
        yield created
        yield GaugeMetricFamily(
            "intake_queue_depth", "Accepted messages not yet handled", value=stats.pending
        )
        yield GaugeMetricFamily(
            "intake_queue_oldest_age_seconds",
            "Age of the oldest accepted message not yet handled",
            value=stats.oldest_pending_age_seconds,
        )
        yield GaugeMetricFamily(
            "intake_whatsapp_unrouted_changes",
            "Shared-route WhatsApp changes waiting for a tenant to register their number",
            value=stats.unrouted_changes,
        )
        by_outcome = CounterMetricFamily(
            "intake_event_delivery_attempts",
            "Outbound webhook requests by outcome",
            labels=["outcome"],
        )
        for outcome, count in sorted(stats.delivery_attempts.items()):
            by_outcome.add_metric([outcome], count)
        yield by_outcome
        by_state = GaugeMetricFamily(
            "intake_event_deliveries", "Outbound event deliveries by state", labels=["state"]
        )
        for state, count in sorted(stats.deliveries.items()):
            by_state.add_metric([state], count)
        yield by_state


class _SpoolCollector(Collector):
    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def collect(self) -> Iterator[Metric]:
        stats = self.spool.stats()
        yield GaugeMetricFamily(
            "intake_spool_depth",
            "Verified messages in this process's spool, not yet moved into the database",
            value=stats.depth,
        )
        yield GaugeMetricFamily(
            "intake_spool_oldest_age_seconds",
            "Age of the oldest message in this process's spool",
            value=stats.oldest_age_seconds,
        )


class Metrics:
    """One registry per app, so that several apps in one process (tests) never share counts."""

    def __init__(self, db: Database, *, probes: BoundedCalls | None = None) -> None:
        self.registry = CollectorRegistry()
        self.webhooks_received = Counter(
            "intake_webhooks_received",
            "Webhook requests received",
            ["channel"],
            registry=self.registry,
        )
        self.webhooks_rejected = Counter(
            "intake_webhooks_rejected",
            "Webhook requests refused",
            ["channel", "reason"],
            registry=self.registry,
        )
        self.webhooks_ignored = Counter(
            "intake_webhooks_ignored",
            "Verified requests that carried no message from a person",
            ["channel", "reason"],
            registry=self.registry,
        )
        self.webhook_secret_used = Counter(
            "intake_webhook_secret_used",
            "Verified webhook requests by the secret that verified them (see --keep-previous)",
            ["channel", "secret"],
            registry=self.registry,
        )
        self.messages_duplicate = Counter(
            "intake_messages_duplicate",
            "Redelivered messages acknowledged without a second copy",
            ["channel"],
            registry=self.registry,
        )
        self.messages_accepted = Counter(
            "intake_messages_accepted",
            "Messages durably accepted",
            ["channel"],
            registry=self.registry,
        )
        self.messages_spooled = Counter(
            "intake_messages_spooled",
            "Messages appended to the local spool because the database could not take them",
            ["channel", "cause"],
            registry=self.registry,
        )
        self.registry.register(_PipelineCollector(db, probes or BoundedCalls(threads=1)))

    def watch_spool(self, spool: Spool) -> None:
        """Serve the spool's depth and the age of its oldest entry."""
        self.registry.register(_SpoolCollector(spool))

    def render(self) -> bytes:
        return generate_latest(self.registry)


router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
