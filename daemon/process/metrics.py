"""Prometheus metrics of one daemon, in its own registry (no process-wide globals)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series only add noise to a daemon's scrape
        r = self.registry = CollectorRegistry()
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
