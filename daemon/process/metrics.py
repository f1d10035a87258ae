"""Prometheus metrics of one daemon, in its own registry (no process-wide globals).

Besides the daemon's own series the registry holds ``frontdesk_build_info{version}``, the
process collector (``process_*``: CPU, memory, open files, start time), the platform collector
(``python_info``) and the garbage collector's (``python_gc_*``), as a default registry would. The
store's gauges (outbox depth, journal rows, conversations open and past their first-response due
time) are read from the store when ``/metrics`` is scraped. A component that does not run adds
no series: the IMAP reader, the Slack desk and each channel register theirs only when they run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlalchemy import and_, case, func, select

from frontdesk import __version__
from frontdesk.channels.connections import Limiter
from frontdesk.storage.db import Store
from frontdesk.storage.models import Conversation

UNRESOLVED = ("open", "pending", "snoozed")
"""Every status but ``resolved``, named so that the count reads only these rows (through the
status index), however many resolved conversations the store keeps."""

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series only add noise to a daemon's scrape
        r = self.registry = CollectorRegistry()
        build = Gauge("frontdesk_build_info", "The running frontdesk's version (always 1)",
                      ["version"], registry=r)
        build.labels(__version__).set(1)
        # What prometheus_client's default registry would hold, in this daemon's own.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.messages_in = Counter(
            "frontdesk_messages_in", "Inbound messages journaled, by channel", ["channel"],
            registry=r)
        self.duplicates = Counter(
            "frontdesk_duplicates", "Inbound deliveries already in the journal", ["channel"],
            registry=r)
        self.messages_out = Counter(
            "frontdesk_messages_out", "Outbound messages delivered, by channel",
            ["channel"], registry=r)
        self.delivery_failures = Counter(
            "frontdesk_delivery_failures",
            "Outbound send attempts that failed, by channel and kind",
            ["channel", "kind"], registry=r)
        self.webhook_deliveries = Counter(
            "frontdesk_webhook_deliveries",
            "Outgoing webhook attempts, by receiver and outcome (delivered, failed: retried, "
            "gone: 410, dropped: the receiver no longer configured or subscribed, skipped: the "
            "conversation erased)", ["receiver", "outcome"], registry=r)
        self.journal_failed = Counter(
            "frontdesk_journal_failed", "Inbound messages that failed to process", ["channel"],
            registry=r)
        self.journal_errors = Counter(
            "frontdesk_journal_commit_errors",
            "Journal commits that failed (senders told to retry)",
            registry=r)
        self.journal_commit_seconds = Histogram(
            "frontdesk_journal_commit_seconds", "Time of one journal group commit",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.journal_batch_size = Histogram(
            "frontdesk_journal_batch_size", "Messages per journal group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.ingest_latency = Histogram(
            "frontdesk_ingest_latency_seconds",
            "From journal commit to the message stored in its conversation", ["channel"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.outbox_depth = Gauge(
            "frontdesk_outbox_depth", "Outbox rows waiting to be sent", registry=r)
        self.journal_pending = Gauge(
            "frontdesk_journal_pending", "Journal rows waiting to be processed", registry=r)
        self.journal_failed_now = Gauge(
            "frontdesk_journal_failed_rows", "Journal rows marked failed (dead letters)",
            registry=r)
        self.channel_up = Gauge(
            "frontdesk_channel_up", "1 when the channel is enabled and running", ["channel"],
            registry=r)
        self.leader = Gauge(
            "frontdesk_leader",
            "1 while this instance runs the single consumer (it holds the consumer's leader "
            "lock: IMAP polling, Telegram getUpdates); 0 while another instance does",
            ["consumer"], registry=r)
        self.conversations_open = Gauge(
            "frontdesk_conversations_open",
            "Conversations not resolved (open, pending or snoozed), by customer channel",
            ["channel"], registry=r)
        self.sla_breached = Gauge(
            "frontdesk_sla_breached",
            "Conversations not resolved and past their first-response due time without a first "
            "response, by customer channel", ["channel"], registry=r)

    async def refresh_conversations(self, store: Store, *, channels: Iterable[str],
                                    now: datetime) -> None:
        """Set the conversation gauges from the store: 0 for each customer channel that runs
        (``channels``), the count for every channel that has some (a channel switched off since
        still shows what it left open)."""
        unresolved = Conversation.status.in_(UNRESOLVED)
        breached = and_(Conversation.first_responded_at.is_(None),
                        Conversation.first_response_due_at < now)
        async with store.reader() as s:
            rows = (await s.execute(
                select(Conversation.channel, func.count(), func.count(case((breached, 1))))
                .where(unresolved).group_by(Conversation.channel))).all()
        self.conversations_open.clear()
        self.sla_breached.clear()
        for channel in channels:
            self.conversations_open.labels(channel).set(0)
            self.sla_breached.labels(channel).set(0)
        for channel, count, late in rows:
            self.conversations_open.labels(channel).set(count)
            self.sla_breached.labels(channel).set(late)

    def watch_connections(self, limiters: Callable[[], Iterable[Limiter]]) -> None:
        """Serve the listeners' connection figures (read at each scrape):
        ``frontdesk_connections_open{server}`` and
        ``frontdesk_connections_refused_total{server, reason}``, reason one of
        ``per_client_cap``, ``total_cap``, ``evicted_idle`` (closed to make room),
        ``too_slow`` (cut by a time bound)."""
        self.registry.register(_ConnectionCollector(limiters))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ConnectionCollector(Collector):
    _REASONS = (("refused_client", "per_client_cap"), ("refused_total", "total_cap"),
                ("evicted", "evicted_idle"), ("too_slow", "too_slow"))

    def __init__(self, limiters: Callable[[], Iterable[Limiter]]) -> None:
        self._limiters = limiters

    def collect(self) -> Iterator[Metric]:
        open_now = GaugeMetricFamily("frontdesk_connections_open",
                                     "Client connections open, by listener", labels=["server"])
        refused = CounterMetricFamily(
            "frontdesk_connections_refused",
            "Client connections refused over a cap or closed (idle to make room, too slow)",
            labels=["server", "reason"])
        for limiter in self._limiters():
            server = limiter.name.lower()
            open_now.add_metric([server], limiter.open)
            for key, reason in self._REASONS:
                refused.add_metric([server, reason], limiter.totals[key])
        yield open_now
        yield refused
