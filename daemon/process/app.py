"""The composition root: builds the daemon from settings and runs its lifecycle.

Start: check that ``daemon.data_dir`` is a directory frontdesk can write in (else stop with one
line saying why), migrate the store, start the journal, the processor (which first finishes
whatever a previous run left pending), the outbox worker, the HTTP server and the enabled
channels, then tell systemd READY. Stop (SIGTERM/SIGINT): STOPPING, stop taking messages, let
in-flight ones commit, finish the batch in hand, and exit 0 within ``daemon.shutdown_timeout``.
Whatever was not sent stays queued in the store for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import importlib.util
import logging
import os
import signal
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import func, select

from frontdesk.channels.base import Channel, ChannelContext, ChannelParts
from frontdesk.channels.connections import Limiter, raise_file_limit
from frontdesk.channels.email.channel import EmailChannel
from frontdesk.channels.logged.intake import Intake
from frontdesk.daemon.process import registry
from frontdesk.daemon.process.files import FileRoute
from frontdesk.daemon.process.http import HttpServer
from frontdesk.daemon.process.journal import Journal, StepAside
from frontdesk.daemon.process.leader import Leadership
from frontdesk.daemon.process.metrics import Metrics
from frontdesk.daemon.process.notify import JOURNAL_CHANNEL, OUTBOX_CHANNEL, Listener, instance_id
from frontdesk.daemon.process.outbox import (
    DeliveryHook,
    OutboxHandler,
    OutboxWorker,
    RetryPolicy,
    RoundPreload,
    Sender,
)
from frontdesk.daemon.process.processor import (
    InboundFilter,
    InboundHook,
    Parser,
    Processor,
    ThreadingRules,
)
from frontdesk.daemon.process.registry import Settings, reply_composer
from frontdesk.daemon.process.systemd import Notifier
from frontdesk.daemon.process.webhooks import KIND as WEBHOOK
from frontdesk.daemon.process.webhooks import WebhookDelivery
from frontdesk.domain.business_hours import BusinessCalendar, calendar_from_settings
from frontdesk.domain.files import FileLinks
from frontdesk.domain.messages import OutboundMessage, Receipt
from frontdesk.domain.webhooks import WebhookEmitter
from frontdesk.storage.attachments import AttachmentStore
from frontdesk.storage.clock import Clock, utcnow
from frontdesk.storage.db import Store
from frontdesk.storage.models import InboundJournal, Outbox

if TYPE_CHECKING:
    from frontdesk.daemon.api.server import ApiServer
    from frontdesk.daemon.dashboard.server import DashboardServer
    from frontdesk.daemon.desk.service import SlackDesk

log = logging.getLogger(__name__)




class Service(Protocol):
    """Something that runs beside the channels for the daemon's lifetime."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    @property
    def ready(self) -> bool: ...


class SlaClock:
    """Due times from the SLA and the business calendar."""

    def __init__(self, calendar: BusinessCalendar, first_response: timedelta) -> None:
        self.calendar = calendar
        self.first_response = first_response

    def first_response_due(self, start: datetime) -> datetime:
        return self.calendar.add(start, self.first_response)


class DataDirError(OSError):
    """``daemon.data_dir`` cannot hold attachment files; ``strerror`` is the one line saying
    why (``frontdesk run`` reports an OSError at start as ``cannot start: <strerror>``)."""


def data_dir_problem(data_dir: str, *, make_files_dir: bool = True) -> str | None:
    """Make sure ``daemon.data_dir`` is a directory frontdesk can write attachment files in;
    None when it is, else one line naming the path and why.

    A missing directory is created, but only when its parent exists: a typo never silently
    becomes a chain of new directories. Writing is tried for real (a file written, synced and
    removed), so a read-only mount, a full disk or a pseudo file system like /proc is found
    even for root, whom permission bits do not stop. ``make_files_dir=False`` (``frontdesk
    check``, maybe run by another user than the daemon's) leaves the attachments folder to the
    daemon: where it does not exist yet, writing is tried in the data directory itself."""
    path = Path(data_dir).expanduser().absolute()
    files = AttachmentStore(path).root

    def problem(why: str) -> str:
        return f"{path}: {why}"

    step = "create it"
    try:
        if not path.exists():
            if not path.parent.is_dir():
                return problem(f"it does not exist, and neither does its parent {path.parent} "
                               "(frontdesk creates only the last directory)")
            path.mkdir(mode=0o750)
        elif not path.is_dir():
            return problem("it is not a directory")
        step = f"create {files}"
        if files.exists() and not files.is_dir():
            return problem(f"{files} is not a directory")
        if make_files_dir:
            files.mkdir(mode=0o750, exist_ok=True)
        here = files if files.is_dir() else path
        step = f"write in {here}"
        probe = here / f".write-check.{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"frontdesk")
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
    except OSError as exc:
        return problem(f"cannot {step}: {exc.strerror or exc}")
    return None


def build_channels(settings: Settings) -> tuple[list[Channel], list[str]]:
    """The customer channels that can run, and one line per part that cannot (the Slack desk
    included) saying why, without secrets."""
    channels, disabled = registry.build_channels(settings)
    slack_missing = desk_missing(settings)
    if slack_missing:
        disabled.insert(0, f"slack desk disabled: {slack_missing}")
    return channels, disabled


def desk_missing(settings: Settings) -> str | None:
    """Why the Slack desk cannot run (a key not set, or its SDK not installed), or None."""
    if (missing := settings.slack.missing()) is not None:
        return missing
    if any(importlib.util.find_spec(sdk) is None for sdk in ("slack_bolt", "slack_sdk")):
        return "the Slack SDK is not installed (pip install 'frontdesk[slack]')"
    return None


class Daemon:
    def __init__(self, settings: Settings, *, clock: Clock = utcnow,
                 notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = Metrics()
        self.notifier = notifier or Notifier.from_environ()
        self.instance = instance_id()
        """This process among the instances sharing the store (``outbox.claimed_by``)."""
        self.store = Store.from_settings(settings.database)
        if settings.webhooks:  # every audited event of a subscribed type queues its webhooks
            WebhookEmitter(settings.webhooks, clock=clock,
                           wake=lambda: self.outbox.kick()).install(self.store)
        self.replies = reply_composer(settings)
        self.sla = SlaClock(calendar_from_settings(settings.sla), settings.sla.first_response)
        # Services beside the channels (the Slack desk, the scheduler) plug in through these:
        # hooks that run inside the ingest transaction, outbox handlers for their kinds of work,
        # hooks on delivery results, and start/stop with the daemon.
        self.inbound_hooks: list[InboundHook] = []
        self.inbound_filters: list[InboundFilter] = []
        self.outbox_handlers: dict[str, OutboxHandler] = {}
        self.delivery_hooks: list[DeliveryHook] = []
        self.round_preloads: list[RoundPreload] = []
        self.services: list[Service] = []
        # Single consumers (IMAP polling, Telegram getUpdates) ask for a leader elector here.
        self.leaders: list[Leadership] = []
        self.channels, self.disabled = build_channels(settings)
        self.known_channels = registry.customer_channels(settings)
        """Every customer channel name (an address may start with one: telegram:12345)."""
        self.email = next((c for c in self.channels if isinstance(c, EmailChannel)), None)
        """The email channel (tools and tests reach its SMTP server's port through it)."""
        attachments = self.attachments = AttachmentStore(Path(settings.daemon.data_dir))
        step_aside = self.step_aside = StepAside(lambda: not self.journal.idle(),
                                                   waited_on=lambda: self.journal.waited_on())
        self.processor = Processor(
            self.store,
            parsers=_parsers(self.channels),
            attachments=attachments,
            due=self.sla,
            rules=ThreadingRules(reopen_window=settings.conversation.reopen_window),
            clock=clock, metrics=self.metrics, hooks=self.inbound_hooks,
            filters=self.inbound_filters,
            step_aside=step_aside, tag_rules=settings.tag_rules,
        )
        self.journal = Journal(self.store, clock=clock, metrics=self.metrics,
                               on_commit=self.processor.kick)
        self.intake = Intake(self.journal, self.store, kick=self.processor.kick, clock=clock)
        """Contacts staff log (``POST /api/v1/inbound``, the Slack form) become conversations."""
        self.services.append(self.intake)
        d = settings.daemon
        senders = _senders(self.channels)
        self.outbox = OutboxWorker(
            self.store, senders=senders, clock=clock,
            metrics=self.metrics,
            policy=RetryPolicy(d.outbox_retry_initial, d.outbox_retry_max, d.outbox_max_attempts),
            poll=d.outbox_poll, handlers=self.outbox_handlers, hooks=self.delivery_hooks,
            preloads=self.round_preloads,
            step_aside=step_aside, lease=d.outbox_lease, instance=self.instance,
        )
        # Several instances on PostgreSQL: new outbox and journal rows, whoever wrote them, wake
        # this instance's idle outbox worker and processor at once (LISTEN/NOTIFY).
        # Channels add theirs (the web hub reads another instance's reply at once).
        self.outbox_wakers: list[Callable[[], None]] = [self.outbox.kick]
        self.listener: Listener | None = None
        if self.store.dialect == "postgresql":
            self.listener = Listener(settings.database.url, {
                OUTBOX_CHANNEL: self._outbox_notified, JOURNAL_CHANNEL: self.processor.kick})
        self.http = HttpServer(settings.http, metrics=self.metrics,
                               readiness=self.readiness, refresh_metrics=self.refresh_gauges)
        self.metrics.watch_connections(self._limiters)
        # Signed links to the files staff send, for providers that fetch them (Twilio, Meta).
        self.file_links = FileLinks(settings.http.public_url, store=self.store, clock=clock)
        self.http.app.router.add_routes(
            FileRoute(self.file_links, self.store, attachments).routes())
        context = ChannelContext(
            store=self.store, clock=clock, attachments=attachments, replies=self.replies,
            calendar=self.sla.calendar, metrics=self.metrics.registry,
            leadership=self.leadership, kick_outbox=self.outbox.kick,
            first_response_due=self.sla.first_response_due, file_links=self.file_links)
        claims: dict[str, list[tuple[Channel, ChannelParts]]] = {}
        for channel in self.channels:
            parts = channel.bind(context)
            for name in channel.channel_names:
                claims.setdefault(name, []).append((channel, parts))
            self.http.app.router.add_routes(parts.routes)
            self.inbound_filters.extend(parts.inbound_filters)
            self.inbound_hooks.extend(parts.inbound_hooks)
            self.delivery_hooks.extend(parts.delivery_hooks)
            self.outbox_handlers.update(parts.outbox_handlers)
            self.outbox_wakers.extend(parts.outbox_wakers)
        for name, sharing in claims.items():
            if len(sharing) > 1:
                senders[name] = _shared_sender(sharing)
        self.desk: SlackDesk | None = None
        """The Slack staff desk, when configured (slack-bolt is imported only then)."""
        if desk_missing(settings) is None:
            from frontdesk.daemon.desk.service import SlackDesk

            self.desk = SlackDesk(self)  # registers its hooks, handler and route
            self.services.append(self.desk)
        from frontdesk.daemon.process.scheduler import Scheduler

        # SLA due times are kept at ingest even when the sweeps do not run (scheduler.enabled).
        self.scheduler = Scheduler(self)  # registers its ingest hook and outbox handler
        if settings.scheduler.enabled:
            self.services.append(self.scheduler)
        # Always the handler: rows of a receiver since removed from the config fail, saying so.
        self.webhooks = WebhookDelivery(settings.webhooks, store=self.store, clock=clock,
                                        metrics=self.metrics)
        self.outbox_handlers[WEBHOOK] = self.webhooks.handle
        if settings.webhooks:
            self.services.append(self.webhooks)
        self.api: ApiServer | None = None
        """The REST API (``[api] enabled``)."""
        if settings.api.enabled:
            self.api = self._api(settings)
            self.http.app.router.add_routes(self.api.routes())
            self.http.app.middlewares.append(self.api.middleware)
            self.services.append(self.api)
        self.dashboard: DashboardServer | None = None
        """The team lead's page at ``/dashboard`` (``[dashboard] enabled``, on by default)."""
        if settings.dashboard.enabled:
            from frontdesk.daemon.dashboard.server import DashboardServer

            self.dashboard = DashboardServer(settings.dashboard, store=self.store, clock=clock,
                                             calendar=self.sla.calendar,
                                             public_url=settings.http.public_url)
            self.http.app.router.add_routes(self.dashboard.routes())
        from frontdesk.daemon.process.digest import Digest

        # The weekly digest in Slack ([digest] channel); without it, one line at start.
        self.digest = Digest(self)  # registers its outbox handler
        self.services.append(self.digest)
        self._started: list[Channel] = []
        self._stop = asyncio.Event()
        self.stop_failed = False
        """A step of the stop raised (logged): ``frontdesk run`` then exits 1, not 0."""
        self._watchdog: asyncio.Task[None] | None = None
        self._data_dir_ok = False

    def _outbox_notified(self) -> None:
        for wake in self.outbox_wakers:
            wake()

    def _api(self, settings: Settings) -> ApiServer:
        from frontdesk.daemon.api import operations
        from frontdesk.daemon.api.server import ApiServer

        services = operations.Services(
            replies=self.replies, calendar=self.sla.calendar,
            known_channels=self.known_channels, kick_outbox=self.outbox.kick,
            store=self.store, attachments=self.attachments, intake=self.intake)
        return ApiServer(settings.api, self.store, clock=self.clock,
                         operations=operations.build(services))

    def leadership(self, name: str) -> Leadership:
        """An elector for one single consumer (``imap:<mailbox>``, ``telegram:<bot id>``): on
        PostgreSQL it runs only in the instance holding that consumer's advisory lock; on SQLite
        at once. A standby instance stays ready (/readyz) while another leads."""
        db = self.settings.database
        elector = Leadership(db.url, name, heartbeat=db.leader_heartbeat.total_seconds(),
                             retry=db.leader_retry.total_seconds(), metrics=self.metrics)
        self.leaders.append(elector)
        return elector

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        checks = {"store": "ok" if await self.store.ping() else "unreachable"}
        # A part with nothing outside to wait for (the logged channel, the intake) says
        # in_readiness = False: /readyz lists what an operator may have to fix.
        for channel in self.channels:
            if getattr(channel, "in_readiness", True):
                checks[channel.name] = ("ok" if channel in self._started and channel.ready
                                        else "down")
            # What a channel depends on besides its own connection (an OAuth 2.0 sign-in:
            # "oauth:<account>"), "ok" or why not, in words an operator can act on.
            extra = getattr(channel, "readiness_checks", None)
            if extra is not None and channel in self._started:
                checks.update(extra())
        for service in self.services:
            if getattr(service, "in_readiness", True):
                checks[service.name] = "ok" if service.ready else "down"
        return all(v == "ok" for v in checks.values()), checks

    async def refresh_gauges(self) -> None:
        async with self.store.reader() as s:
            self.metrics.outbox_depth.set((await s.execute(
                select(func.count()).select_from(Outbox).where(Outbox.state == "pending")
            )).scalar_one())
            counts = dict((await s.execute(
                select(InboundJournal.state, func.count()).where(
                    InboundJournal.state.in_(("pending", "failed")))
                .group_by(InboundJournal.state)
            )).all())
        self.metrics.journal_pending.set(counts.get("pending", 0))
        self.metrics.journal_failed_now.set(counts.get("failed", 0))
        await self.metrics.refresh_conversations(
            self.store, channels=[n for c in self.channels for n in c.channel_names],
            now=self.clock())
        if self.desk is not None:  # the desk's own gauge: its Slack backlog
            await self.desk.refresh_gauges()

    async def check_data_dir(self) -> None:
        """Raise :class:`DataDirError` unless ``daemon.data_dir`` can hold attachment files
        (the first mail with an attachment would fail otherwise). Checked once."""
        if self._data_dir_ok:
            return
        problem = await asyncio.to_thread(data_dir_problem, self.settings.daemon.data_dir)
        if problem is not None:
            raise DataDirError(errno.EINVAL, f"daemon.data_dir {problem}")
        self._data_dir_ok = True

    def _limiters(self) -> list[Limiter]:
        """The listeners' connection caps, for the metrics."""
        limiters = [self.http.limiter]
        if self.email is not None and self.email.smtp is not None:
            limiters.append(self.email.smtp.limiter)
        return limiters

    async def start(self) -> None:
        self.notifier.notify("STATUS=starting")
        await self.check_data_dir()
        await asyncio.to_thread(AttachmentStore(self.settings.daemon.data_dir).secure)
        await self.store.ensure_schema()
        self.journal.start()
        self.processor.start()
        self.outbox.start()
        if self.listener is not None:
            self.listener.start()  # connects in the background; polling covers until then
        # The listeners' connection caps must fit under the open-file limit (issue 14).
        caps = {"http.max_connections": self.settings.http.max_connections}
        if self.email is not None and self.email.smtp is not None:
            caps["email.smtp_server.max_connections"] = self.email.smtp.limiter.max_connections
        raise_file_limit(caps)
        await self.http.start()
        for line in self.disabled:
            log.info("%s", line)
        for service in self.services:
            await service.start()
        for channel in self.channels:
            await channel.start(self.journal)
            self._started.append(channel)
            self.metrics.channel_up.labels(channel.name).set(1)
        self._watchdog = asyncio.create_task(self.notifier.watchdog_loop(), name="watchdog")
        self.notifier.notify("READY=1", "STATUS=running")
        log.info("frontdesk is running")

    async def stop(self) -> None:
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        log.info("stopping: no new messages; finishing what is in flight")
        timeout = self.settings.daemon.shutdown_timeout.total_seconds()

        async def drain() -> None:
            for channel in reversed(self._started):
                await channel.stop()
                self.metrics.channel_up.labels(channel.name).set(0)
            await self.journal.stop()
            await self.processor.stop()
            await self.outbox.stop()
            for service in reversed(self.services):
                await service.stop()

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # The drain gets all but the last two seconds (at least one); a step stuck behind a
        # remote or the store is cancelled, and given half a second to let go.
        drained = await _finish(asyncio.create_task(drain(), name="drain"), max(1.0, timeout - 2))
        if drained is None:
            log.warning("shutdown_timeout reached; unsent work stays queued for the next start")

        async def close() -> None:
            if self.listener is not None:
                await self.listener.stop(timeout=min(2.0, max(0.4, deadline - loop.time())))
            if self._watchdog:
                self._watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watchdog
            await self.http.stop()
            await self.store.dispose()

        # Closing connections gets what is left (a silent database server would otherwise hold
        # the goodbye of every pooled connection).
        closed = await _finish(asyncio.create_task(close(), name="close"),
                               max(0.5, deadline - loop.time() - 0.5))
        if closed is None:
            log.warning("shutdown_timeout reached while closing connections; exiting anyway")
        self.stop_failed = drained is False or closed is False
        if drained and closed:
            log.info("stopped cleanly")
        else:
            log.info("stopped")

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Start, wait for SIGTERM/SIGINT, stop."""
        await self.check_data_dir()  # before anything starts: nothing to stop yet
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            settle_garbage_collector()
            await self._stop.wait()
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def settle_garbage_collector() -> None:
    """Once the daemon runs, what start-up made (modules, mappers, compiled statements, the
    channels) is moved out of the collector's sight (``gc.freeze``). Processing a burst
    allocates many short-lived ORM objects, and each of the collector's full passes rescanned
    all of start-up's: about 6 s of CPU in a burst of 3,000 new conversations, 2.1 s after."""
    gc.collect()
    gc.freeze()


async def _finish(task: asyncio.Task[None], seconds: float) -> bool | None:
    """Wait up to ``seconds`` for ``task``; past that, cancel it, give it half a second to
    unwind and return None. True if it finished in time, False if it failed (logged)."""
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
        return None
    if task.cancelled():
        return False
    if (exc := task.exception()) is not None:
        log.error("stopping: %s", exc, exc_info=exc)
        return False
    return True


def _parsers(channels: list[Channel]) -> dict[str, Parser]:
    """Journal rows are parsed by the channel that journaled them under that name."""
    return {name: c.parse for c in channels for name in c.journal_names}


def _shared_sender(sharing: list[tuple[Channel, ChannelParts]]) -> Sender:
    """The send of a customer channel several channels serve: the first whose ``answers``
    claims the message, else the first that claims nothing (it takes the rest)."""
    def choose(outbound: OutboundMessage) -> Sender:
        for channel, parts in sharing:
            if parts.answers is not None and parts.answers(outbound):
                return channel.send
        fallback = next((c for c, p in sharing if p.answers is None), sharing[0][0])
        return fallback.send

    async def send(outbound: OutboundMessage) -> Receipt:
        return await choose(outbound)(outbound)

    return send


def _senders(channels: list[Channel]) -> dict[str, Sender]:
    """Outbound messages go to the channel that owns the customer channel name."""
    return {name: c.send for c in channels for name in c.channel_names}
