"""SLA policies and clocks: which targets apply to a conversation, and when each falls due.

A conversation has up to two clocks, kept in ``conversations.sla_state``:

* ``response``: runs from a customer message while the team owes an answer, until a staff reply.
  Its target is ``first_response`` until the conversation's first staff reply, ``next_response``
  after that.
* ``resolution``: runs from the first customer message until the conversation is resolved (only
  when the policy has a ``resolution`` target).

Clocks count business time (the SLA calendar) and run only while the conversation is ``open``:
waiting on the customer (``pending``), ``snoozed`` or ``resolved`` pauses them with what was used
so far, and they resume with the rest. A clock is identified by when it started (``since``), so a
due time that moves (a pause, a new policy after a change of priority) keeps the escalation levels
already reached: each level fires once per clock.

Pure: no I/O and no clock of its own; the scheduler stores what :meth:`SlaEngine.refresh` leaves
on the conversation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from frontdesk.config.schema import EscalationLevel, SlaConfig
from frontdesk.domain.business_hours import BusinessCalendar
from frontdesk.storage.models import Contact, Conversation

log = logging.getLogger(__name__)

CLOCK_NAMES = ("response", "resolution")
KIND_WORDS = {"first_response": "first response", "next_response": "next response",
              "resolution": "resolution"}


@dataclass(frozen=True)
class Targets:
    """The targets of the policy that applies to a conversation."""

    policy: str
    first_response: timedelta
    next_response: timedelta
    resolution: timedelta | None

    def of(self, kind: str) -> timedelta | None:
        return {"first_response": self.first_response, "next_response": self.next_response,
                "resolution": self.resolution}[kind]


def contact_tags(contact: Contact | None) -> set[str]:
    """A contact's tags, lower-cased: keys of ``contacts.tags`` whose value is true, and the
    items of a ``"tags"`` list (SLA policies and the Slack desk's routes)."""
    if contact is None or not contact.tags:
        return set()
    tags = {str(k).lower() for k, v in contact.tags.items() if v is True}
    language = contact.tags.get("language")
    if isinstance(language, str) and language.strip():  # shown and set as the tag lang:de
        tags.add(f"lang:{language.strip().lower()}")
    listed = contact.tags.get("tags")
    if isinstance(listed, list):
        tags |= {str(t).lower() for t in listed}
    return tags


class SlaPolicies:
    """``[sla]`` and its ``[[sla.policies]]``: the first policy whose every condition matches."""

    def __init__(self, sla: SlaConfig) -> None:
        self._sla = sla
        self.default = Targets("default", sla.first_response,
                               sla.next_response or sla.first_response, sla.resolution)

    def choose(self, *, channel: str, priority: str, tags: Iterable[str]) -> Targets:
        tagset = {t.lower() for t in tags}
        for p in self._sla.policies:
            if p.channels and channel not in p.channels:
                continue
            if p.priorities and priority not in p.priorities:
                continue
            if p.contact_tags and not tagset & {t.lower() for t in p.contact_tags}:
                continue
            first = p.first_response or self.default.first_response
            return Targets(p.name, first,
                           p.next_response or p.first_response or self.default.next_response,
                           p.resolution if p.resolution is not None else self.default.resolution)
        return self.default


# --- clocks ------------------------------------------------------------------------------------

def _parse(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass
class SlaClock:
    """One clock; stored as a small dict in ``sla_state["clocks"][name]``."""

    kind: str  # first_response | next_response | resolution
    since: datetime
    target: float  # seconds of business time allowed
    consumed: float = 0.0  # business seconds used before running_since
    running_since: datetime | None = None  # None: paused
    due: datetime | None = None  # the breach instant, once known
    warned: bool = False
    level: int = 0  # escalation levels fired for this clock

    @classmethod
    def load(cls, data: Mapping[str, Any]) -> SlaClock:
        return cls(kind=str(data["kind"]), since=_parse(data["since"]) or datetime.min,
                   target=float(data["target"]), consumed=float(data.get("consumed", 0.0)),
                   running_since=_parse(data.get("running_since")), due=_parse(data.get("due")),
                   warned=bool(data.get("warned")), level=int(data.get("level", 0)))

    def dump(self) -> dict[str, Any]:
        return {"kind": self.kind, "since": _iso(self.since), "target": self.target,
                "consumed": self.consumed, "running_since": _iso(self.running_since),
                "due": _iso(self.due), "warned": self.warned, "level": self.level}

    @property
    def running(self) -> bool:
        return self.running_since is not None

    def used(self, now: datetime, calendar: BusinessCalendar) -> float:
        """Business seconds used up to ``now``."""
        if self.running_since is None:
            return self.consumed
        return self.consumed + calendar.elapsed(self.running_since, now).total_seconds()

    def at(self, position: float, calendar: BusinessCalendar) -> datetime | None:
        """The instant the clock reaches ``position`` business seconds (None while paused; the
        resume instant if it was passed before then)."""
        if self.running_since is None:
            return None
        rest = position - self.consumed
        if rest <= 0:
            return self.running_since
        return calendar.add(self.running_since, timedelta(seconds=rest))

    def pause(self, at: datetime, calendar: BusinessCalendar) -> None:
        if self.running_since is None:
            return
        at = max(at, self.running_since)
        self.consumed += calendar.elapsed(self.running_since, at).total_seconds()
        self.running_since = None

    def resume(self, at: datetime) -> None:
        if self.running_since is None:
            self.running_since = at

    def settle_due(self, calendar: BusinessCalendar) -> None:
        """The due time from the target and what is used: while running, when the target is
        reached (kept if it was already passed before this run); while paused, kept only if
        already breached."""
        breached_before = self.consumed >= self.target
        if self.running_since is not None:
            if not breached_before:
                self.due = self.at(self.target, calendar)
            elif self.due is None:
                self.due = self.running_since
        elif not breached_before:
            self.due = None


@dataclass(frozen=True)
class Stage:
    """The next escalation step of a clock: ``"warning"`` or level ``n`` (1-based)."""

    name: str  # "warning" | "level"
    level: int  # 0 for the warning
    position: float  # business seconds on the clock


def next_stage(clock: SlaClock, levels: list[EscalationLevel],
               warn_before: timedelta) -> Stage | None:
    warn = warn_before.total_seconds()
    if warn > 0 and not clock.warned and clock.level == 0 and clock.target > warn:
        return Stage("warning", 0, clock.target - warn)
    if clock.level < len(levels):
        return Stage("level", clock.level + 1,
                     clock.target + levels[clock.level].after.total_seconds())
    return None


@dataclass
class SlaState:
    """``conversations.sla_state`` as objects."""

    clocks: dict[str, SlaClock] = field(default_factory=dict)
    settled_at: datetime | None = None  # customer messages up to here need no answer (a rating)
    extra: dict[str, Any] = field(default_factory=dict)  # the scheduler's own bookkeeping

    @classmethod
    def load(cls, data: Mapping[str, Any] | None) -> SlaState:
        data = dict(data or {})
        clocks = {name: SlaClock.load(c) for name, c in (data.pop("clocks", None) or {}).items()}
        settled = _parse(data.pop("settled_at", None))
        return cls(clocks=clocks, settled_at=settled, extra=data)

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out["clocks"] = {name: c.dump() for name, c in self.clocks.items()}
        if self.settled_at is not None:
            out["settled_at"] = _iso(self.settled_at)
        return out


class SlaEngine:
    """Brings a conversation's clocks and SLA due columns in line with its state."""

    def __init__(self, sla: SlaConfig, calendar: BusinessCalendar,
                 levels: list[EscalationLevel]) -> None:
        self.sla = sla
        self.calendar = calendar
        self.levels = levels
        self.policies = SlaPolicies(sla)

    def owes_answer(self, conversation: Conversation, state: SlaState) -> bool:
        """Whether a customer message is waiting for a staff reply."""
        last_in = conversation.last_customer_message_at
        if last_in is None:
            return False
        settled = [t for t in (conversation.last_staff_message_at, state.settled_at) if t]
        return not settled or last_in > max(settled)

    def refresh(self, conversation: Conversation, tags: Iterable[str], now: datetime, *,
                at: datetime | None = None) -> SlaState:
        """Start, stop, pause, resume and re-target the clocks; set the due columns.

        ``at`` is when the change happened (default: the conversation's ``updated_at``, not
        later than ``now``), so a change the scheduler sees late is still counted from its time.
        """
        c = conversation
        if at is None:
            at = min(now, c.updated_at) if c.updated_at is not None else now
        state = SlaState.load(c.sla_state)
        targets = self.policies.choose(channel=c.channel, priority=c.priority, tags=tags)
        running = c.status == "open"

        response = state.clocks.get("response")
        if self.owes_answer(c, state):
            kind = "first_response" if c.first_responded_at is None else "next_response"
            settled = max([t for t in (c.last_staff_message_at, state.settled_at) if t],
                          default=None)
            stale = response is None or response.kind != kind or (
                settled is not None and response.since <= settled)
            if stale:
                response = SlaClock(kind=kind, since=at,
                                    target=targets.of(kind).total_seconds())  # type: ignore[union-attr]
                if running:
                    response.running_since = at
        else:
            response = None
        resolution = state.clocks.get("resolution")
        if targets.resolution is None:
            resolution = None
        elif resolution is None and c.last_customer_message_at is not None \
                and c.status != "resolved":
            resolution = SlaClock(kind="resolution", since=at,
                                  target=targets.resolution.total_seconds())
            if running:
                resolution.running_since = at

        clocks = {name: clock for name, clock in (("response", response),
                                                   ("resolution", resolution)) if clock}
        for clock in clocks.values():
            target = targets.of(clock.kind)
            if target is not None:
                clock.target = target.total_seconds()
            if running:
                clock.resume(at)
            else:
                clock.pause(at, self.calendar)
            clock.settle_due(self.calendar)
        state.clocks = clocks

        if response is not None and response.kind == "first_response":
            c.first_response_due_at = response.due
        c.next_response_due_at = response.due if response is not None \
            and response.kind == "next_response" else None
        c.resolution_due_at = resolution.due if resolution is not None else None
        c.sla_policy = targets.policy
        c.escalation_level = max((clock.level for clock in clocks.values()), default=0)
        c.escalation_due_at = self.next_escalation(state)
        c.sla_state = state.dump()
        return state

    def next_escalation(self, state: SlaState) -> datetime | None:
        """When the next warning or escalation level of any running clock is due."""
        times = []
        for clock in state.clocks.values():
            stage = next_stage(clock, self.levels, self.sla.warn_before)
            if stage is not None:
                when = clock.at(stage.position, self.calendar)
                if when is not None:
                    times.append(when)
        return min(times, default=None)


def remaining(clock: SlaClock, now: datetime, calendar: BusinessCalendar) -> timedelta:
    """Business time left before the clock's target (negative once past it)."""
    return timedelta(seconds=clock.target - clock.used(now, calendar))


def _iso_z(value: datetime | None) -> str | None:
    """As :func:`frontdesk.domain.conversations.iso` (UTC, milliseconds, "Z")."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sla_view(c: Conversation) -> dict[str, Any]:
    """The scheduler's fields of a conversation for ``frontdesk show`` and ``--json``."""
    state = SlaState.load(c.sla_state)
    paused = {name: round(clock.target - clock.consumed)
              for name, clock in state.clocks.items() if not clock.running}
    return {
        "next_response_due_at": _iso_z(c.next_response_due_at),
        "resolution_due_at": _iso_z(c.resolution_due_at),
        "escalation_due_at": _iso_z(c.escalation_due_at),
        "acknowledgement_due_at": _iso_z(c.ack_due_at),
        "sla_policy": c.sla_policy,
        "sla_paused": bool(paused),
        "sla_paused_seconds_left": paused,
        "survey_due_at": _iso_z(c.survey_due_at),
        "survey_sent_at": _iso_z(c.survey_sent_at),
        "rating": c.rating,
        "rated_at": _iso_z(c.rated_at),
        "reminder_due_at": _iso_z(c.reminder_due_at),
        "snoozed_until": _iso_z(c.snoozed_until),
    }


def _left(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m"


def sla_lines(d: Mapping[str, Any], when: Callable[[str], str] = str) -> list[str]:
    """What ``frontdesk show`` prints about the SLA, escalations and the survey (from the JSON
    view, so text and ``--json`` always agree); ``when`` shows a JSON time to a person."""
    parts = []
    if d.get("next_response_due_at"):
        parts.append(f"next response due {when(d['next_response_due_at'])}")
    if d.get("resolution_due_at"):
        parts.append(f"resolution due {when(d['resolution_due_at'])}")
    paused = d.get("sla_paused_seconds_left") or {}
    if paused:
        parts.append("paused (" + ", ".join(f"{name} {_left(s)} left"
                                            for name, s in sorted(paused.items())) + ")")
    if d.get("escalation_level"):
        parts.append(f"escalation level {d['escalation_level']}")
    if d.get("escalation_due_at"):
        parts.append(f"next warning/escalation {when(d['escalation_due_at'])}")
    lines = []
    if parts or d.get("sla_policy"):
        lines.append(f"  SLA policy {d.get('sla_policy') or 'default'}"
                     + (": " + ", ".join(parts) if parts else ""))
    follow = []
    if d.get("acknowledgement_due_at"):
        follow.append(f"acknowledgement due {when(d['acknowledgement_due_at'])}")
    if d.get("snoozed_until") and d.get("status") == "snoozed":
        follow.append(f"snoozed until {when(d['snoozed_until'])}")
    if d.get("reminder_due_at"):
        follow.append(f"reminder due {when(d['reminder_due_at'])}")
    if d.get("survey_due_at"):
        follow.append(f"survey due {when(d['survey_due_at'])}")
    if d.get("survey_sent_at"):
        follow.append(f"survey sent {when(d['survey_sent_at'])}")
    if d.get("rating") is not None:
        follow.append(f"rating {d['rating']}/5")
    if follow:
        lines.append("  " + ", ".join(follow))
    return lines
