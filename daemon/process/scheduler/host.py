"""What the scheduler takes from the daemon that hosts it, as read-only Protocols.

:class:`frontdesk.daemon.process.app.Daemon` satisfies :class:`SchedulerHost`; the scheduler
depends on no concrete class of the process or of the desk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry

from frontdesk.channels.base import InboundHook, OutboxHandler
from frontdesk.config.schema import CoreSettings
from frontdesk.daemon.process.scheduler.staff import Desk
from frontdesk.domain.business_hours import BusinessCalendar
from frontdesk.domain.replies import ReplyComposer
from frontdesk.storage.clock import Clock
from frontdesk.storage.db import Store


class SendingChannel(Protocol):
    """A customer channel, by the channel names whose messages it sends (Twilio: sms, whatsapp,
    voice; an IMAP reader: none)."""

    @property
    def channel_names(self) -> Sequence[str]: ...


class MetricsRegistry(Protocol):
    @property
    def registry(self) -> CollectorRegistry: ...


class DueTimes(Protocol):
    """The daemon's SLA due times; the scheduler takes their business calendar."""

    @property
    def calendar(self) -> BusinessCalendar: ...


class OutboxWorker(Protocol):
    def kick(self) -> None:
        """Look for due rows now."""


class StepAside(Protocol):
    """Background work yields while messages arrive (see ``frontdesk.daemon.process.journal``)."""

    async def wait(self, last_step: float, stopping: Callable[[], bool] = ...) -> None: ...


class SchedulerHost(Protocol):
    """The parts of the daemon the scheduler uses; it registers its ingest hook and its outbox
    handler in ``inbound_hooks`` and ``outbox_handlers``, and posts notices through ``desk``
    (None without Slack)."""

    @property
    def settings(self) -> CoreSettings: ...

    @property
    def store(self) -> Store: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def metrics(self) -> MetricsRegistry: ...

    @property
    def sla(self) -> DueTimes: ...

    @property
    def replies(self) -> ReplyComposer: ...

    @property
    def channels(self) -> Sequence[SendingChannel]: ...

    @property
    def desk(self) -> Desk | None: ...

    @property
    def outbox(self) -> OutboxWorker: ...

    @property
    def step_aside(self) -> StepAside | None: ...

    @property
    def inbound_hooks(self) -> list[InboundHook]: ...

    @property
    def outbox_handlers(self) -> dict[str, OutboxHandler]: ...
