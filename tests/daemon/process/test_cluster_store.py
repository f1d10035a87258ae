"""Several instances on one PostgreSQL store (issue 7): the outbox's claims and leases,
LISTEN/NOTIFY wake-ups, the processor's row locks and races, the scheduler's per-recipient
acknowledgement lock, and the Slack desk's root posts. Each "instance" here is its own Store (its
own engine and pool) on one real database; the daemons' own parts run on this test's event loop.
PostgreSQL only: skipped, saying so, without FRONTDESK_TEST_POSTGRES_URL."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.channels.base import TemporaryFailure
from frontdesk.daemon.process.app import Daemon
from frontdesk.daemon.process.metrics import Metrics
from frontdesk.daemon.process.notify import JOURNAL_CHANNEL, OUTBOX_CHANNEL, Listener
from frontdesk.daemon.process.outbox import OutboxWorker, RetryPolicy
from frontdesk.daemon.process.scheduler import ACK_LOCK_KEYS
from frontdesk.domain.messages import InboundMessage, OutboundMessage, Receipt
from frontdesk.storage.db import Store
from frontdesk.storage.models import (
    Acknowledgement,
    Contact,
    Conversation,
    Event,
    Identity,
    InboundJournal,
    Message,
    Outbox,
)
from tests.fakes.slack import BOT_TOKEN as SLACK_TOKEN
from tests.fakes.slack import SIGNING_SECRET, FakeSlack
from tests.fakes.smtp_sink import SmtpSink
from tests.fakes.telegram import BOT_TOKEN as TELEGRAM_TOKEN
from tests.support.helpers import FakeClock, eventually, mail, send


def utcnow() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
async def stores(postgres_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two instances' stores on one fresh PostgreSQL database, migrated."""
    a, b = Store(postgres_url), Store(postgres_url)
    await a.ensure_schema()
    await b.ensure_schema()  # the second finds it done
    try:
        yield a, b
    finally:
        await a.dispose()
        await b.dispose()


async def _conversations(store: Store, n: int) -> list[int]:
    now = utcnow()
    async with store.session() as s:
        contacts = [Contact(name=f"Customer {i}", created_at=now, updated_at=now, tags={})
                    for i in range(n)]
        s.add_all(contacts)
        await s.flush()
        conversations = [Conversation(status="open", priority="normal", subject=f"Matter {i}",
                                      channel="sms", contact_id=c.id, created_at=now,
                                      updated_at=now, escalation_level=0)
                         for i, c in enumerate(contacts)]
        s.add_all(conversations)
        await s.flush()
        return [c.id for c in conversations]


def _row(conversation_id: int, seq: int, now: datetime) -> Outbox:
    out = OutboundMessage(channel="sms", to_address=f"+1555000{conversation_id:04d}",
                          text=f"{conversation_id}:{seq}")
    return Outbox(kind="deliver", conversation_id=conversation_id, message_id=None,
                  payload=asdict(out), idempotency_key=f"test-{conversation_id}-{seq}",
                  state="pending", attempts=0, next_attempt_at=now, created_at=now)


class Recorder:
    """A customer channel's send as the outbox sees it: records every attempt, by instance."""

    def __init__(self, *, pause: float = 0.0, fail_first: Callable[[str], bool] = lambda t: False,
                 hang: bool = False) -> None:
        self.attempts: list[tuple[str, str, float]] = []  # (instance, text, monotonic time)
        self.delivered: list[tuple[str, str]] = []
        self.pause = pause
        self.fail_first = fail_first
        self.hang = hang
        self.entered = asyncio.Event()
        self._tried: Counter[str] = Counter()

    def sender(self, instance: str) -> Callable[[OutboundMessage], Awaitable[Receipt]]:
        async def send(out: OutboundMessage) -> Receipt:
            self.attempts.append((instance, out.text, time.monotonic()))
            self._tried[out.text] += 1
            self.entered.set()
            if self.hang:
                await asyncio.Event().wait()
            await asyncio.sleep(self.pause or random.uniform(0, 0.002))
            if self._tried[out.text] == 1 and self.fail_first(out.text):
                raise TemporaryFailure("the far side is busy")
            self.delivered.append((instance, out.text))
            return Receipt(remote_id=out.text)
        return send


def _worker(store: Store, recorder: Recorder, name: str, *, poll: float = 0.05,
            lease: timedelta = timedelta(minutes=2)) -> OutboxWorker:
    return OutboxWorker(
        store, senders={"sms": recorder.sender(name)}, clock=utcnow, metrics=Metrics(),
        policy=RetryPolicy(initial=timedelta(milliseconds=20),
                           maximum=timedelta(milliseconds=100), max_attempts=5),
        poll=timedelta(seconds=poll), lease=lease, instance=name)


async def _outbox_states(store: Store) -> Counter[str]:
    async with store.reader() as s:
        return Counter(dict((await s.execute(
            select(Outbox.state, func.count()).group_by(Outbox.state))).all()))


def _in_lane_order(texts: list[str]) -> dict[int, list[int]]:
    lanes: dict[int, list[int]] = defaultdict(list)
    for t in texts:
        conversation, seq = t.split(":")
        lanes[int(conversation)].append(int(seq))
    return lanes


# -- the outbox ---------------------------------------------------------------------------------

async def test_two_workers_send_every_row_once_in_conversation_order(
        stores: tuple[Store, Store]) -> None:
    a, b = stores
    conversations = await _conversations(a, 50)
    recorder = Recorder(fail_first=lambda t: int(t.split(":")[1]) % 4 == 1)
    workers = [_worker(a, recorder, "a"), _worker(b, recorder, "b")]
    for w in workers:
        w.start()
    try:
        for seq in range(10):  # 500 rows: ten per conversation, written while the workers run
            now = utcnow()
            async with (a if seq % 2 else b).session() as s:
                s.add_all(_row(c, seq, now) for c in conversations)
            for w in workers:
                w.kick()
        await eventually(lambda: _all_done(a, 500), timeout=60)
    finally:
        for w in workers:
            await w.stop()
    sent = Counter(t for _, t in recorder.delivered)
    assert len(sent) == 500 and set(sent.values()) == {1}  # every row once
    by_instance = Counter(i for i, _ in recorder.delivered)
    assert by_instance["a"] > 0 and by_instance["b"] > 0  # the work was shared
    # Per conversation, no row was even tried before the one before it was delivered.
    for seqs in _in_lane_order([t for _, t, _ in recorder.attempts]).values():
        assert seqs == sorted(seqs)
    for seqs in _in_lane_order([t for _, t in recorder.delivered]).values():
        assert seqs == list(range(10))
    retried = sum(1 for n in Counter(t for _, t, _ in recorder.attempts).values() if n == 2)
    assert retried == 50 * 3  # seq 1, 5 and 9 of each conversation failed once, then went
    async with a.reader() as s:
        claimed = Counter((await s.execute(select(Outbox.claimed_by))).scalars())
    assert set(claimed) <= {"a", "b"}


async def _all_done(store: Store, n: int) -> bool:
    return (await _outbox_states(store))["done"] == n


async def test_each_round_is_planned_for_the_outbox_as_it_is(
        stores: tuple[Store, Store]) -> None:
    # asyncpg prepares a statement once per connection, and after five runs PostgreSQL keeps
    # one generic plan for it: a plan of the round's query made while the outbox was nearly
    # empty took 8 s a round with thousands of rows waiting (benchmarks/e2e_latency.py). The
    # claim's transaction asks for a plan of its own for each run.
    a, _b = stores
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(a.engine.sync_engine, "before_cursor_execute", record)
    conversations = await _conversations(a, 7)
    worker = _worker(a, Recorder(), "one")
    for n, c in enumerate(conversations):  # seven rounds: past the five custom plans
        async with a.session() as s:
            s.add(_row(c, 0, utcnow()))
        statements.clear()
        assert await worker.deliver_due() == 1, n
        kinds = [st.split()[0] for st in statements]
        begin = next(i for i, st in enumerate(statements) if st.startswith("SET LOCAL"))
        assert statements[begin] == "SET LOCAL plan_cache_mode = force_custom_plan"
        # the round's queries (the remotes with rows waiting, then the one remote's heads), the
        # lock and the claim follow it, in the same transaction
        assert kinds[begin + 1:begin + 5] == ["WITH", "SELECT", "SELECT", "UPDATE"], statements
        assert statements[begin + 3].endswith("FOR UPDATE OF outbox SKIP LOCKED")
    assert (await _outbox_states(a))["done"] == 7


async def test_a_dead_instances_claim_is_sent_by_another_after_the_lease(
        stores: tuple[Store, Store]) -> None:
    a, b = stores
    conversations = await _conversations(a, 3)
    now = utcnow()
    async with a.session() as s:
        s.add_all(_row(c, seq, now) for seq in range(2) for c in conversations)
    lease = timedelta(seconds=4)  # room for a loaded machine between the steps below
    hung = Recorder(hang=True)
    dead = _worker(a, hung, "dead", lease=lease)
    dead.start()
    await asyncio.wait_for(hung.entered.wait(), 5)  # it claimed the heads and is sending them
    claimed_at = time.monotonic()
    assert dead._task is not None
    dead._task.cancel()  # the instance dies: nothing is handed back
    with pytest.raises(asyncio.CancelledError):
        await dead._task
    async with a.reader() as s:
        held = list((await s.execute(select(Outbox).where(Outbox.claimed_by == "dead"))).scalars())
    assert len(held) == 3 and all(r.state == "pending" and r.next_attempt_at > utcnow()
                                  for r in held)

    recorder = Recorder()
    other = _worker(b, recorder, "other", lease=lease)
    assert await other.deliver_due() == 0  # claimed, not due: neither the heads nor their lanes
    other.start()
    try:
        await eventually(lambda: _all_done(a, 6), timeout=20)
    finally:
        await other.stop()
    first_send = min(t for _, _, t in recorder.attempts)
    assert first_send - claimed_at >= lease.total_seconds() - 0.2
    assert sorted(t for _, t in recorder.delivered) == sorted(
        f"{c}:{seq}" for c in conversations for seq in range(2))
    for seqs in _in_lane_order([t for _, t in recorder.delivered]).values():
        assert seqs == [0, 1]
    # The dead one was sending the three heads at once (three lanes), none of them twice.
    assert sorted(t for i, t, _ in hung.attempts if i == "dead") == sorted(
        f"{c}:0" for c in conversations)


async def test_a_long_batch_renews_its_claim_instead_of_losing_it(
        stores: tuple[Store, Store]) -> None:
    a, b = stores
    conversations = await _conversations(a, 10)
    now = utcnow()
    async with a.session() as s:
        s.add_all(_row(c, 0, now) for c in conversations)
    lease = timedelta(seconds=1.2)
    recorder = Recorder(pause=0.2)  # ten sends of 0.2 s: the batch outlasts the lease
    slow = _worker(a, recorder, "slow", lease=lease)
    eager = _worker(b, recorder, "eager", lease=lease, poll=0.05)
    slow.start()
    await asyncio.wait_for(recorder.entered.wait(), 5)  # it holds all ten
    eager.start()
    try:
        await eventually(lambda: _all_done(a, 10), timeout=15)
    finally:
        await slow.stop()
        await eager.stop()
    assert Counter(t for _, t, _ in recorder.attempts) == Counter(
        f"{c}:0" for c in conversations)  # each tried once: the claim never ran out
    assert {i for i, _ in recorder.delivered} == {"slow"}


async def test_a_stopping_worker_hands_back_what_it_claimed(
        stores: tuple[Store, Store]) -> None:
    a, b = stores
    conversations = await _conversations(a, 5)
    now = utcnow()
    async with a.session() as s:
        s.add_all(_row(c, 0, now) for c in conversations)
    recorder = Recorder(pause=0.3)
    first = _worker(a, recorder, "first")
    first.sends_per_remote = 1  # one send at a time: four wait for their turn
    first.start()
    await asyncio.wait_for(recorder.entered.wait(), 5)
    await first.stop()  # finishes the send in hand, hands back the other four at once
    assert [i for i, _ in recorder.delivered] == ["first"]
    async with a.reader() as s:
        rows = list((await s.execute(select(Outbox).where(Outbox.state == "pending"))).scalars())
    assert len(rows) == 4 and all(r.claimed_by is None and r.next_attempt_at <= utcnow()
                                  for r in rows)
    second = _worker(b, recorder, "second")
    assert await second.deliver_due() == 4  # no lease to wait for


# -- LISTEN/NOTIFY ------------------------------------------------------------------------------

async def test_notify_wakes_an_idle_worker_at_once_and_survives_a_lost_connection(
        stores: tuple[Store, Store], postgres_url: str) -> None:
    a, b = stores
    [conversation] = await _conversations(a, 1)
    recorder = Recorder()
    worker = _worker(a, recorder, "idle", poll=60)  # polling alone would take a minute
    journal_kicks = asyncio.Event()
    listener = Listener(postgres_url, {OUTBOX_CHANNEL: worker.kick,
                                       JOURNAL_CHANNEL: journal_kicks.set})
    listener.initial_delay = 0.1
    worker.start()
    listener.start()
    try:
        await listener.wait_connected(10)
        await asyncio.sleep(0.2)  # the worker's first round is over: it waits for a minute

        async def row_written_elsewhere(seq: int) -> float:
            before = len(recorder.delivered)
            async with b.session() as s:  # another instance (or the command line) writes it
                s.add(_row(conversation, seq, utcnow()))
            began = time.monotonic()
            await eventually(lambda: _more(recorder, before), timeout=5, interval=0.005)
            return time.monotonic() - began

        woke = await row_written_elsewhere(0)
        assert woke < 0.5, woke

        journal_kicks.clear()
        async with b.session() as s:
            s.add(InboundJournal(channel="telegram", remote_id="message:1:1", raw=b"{}", meta={},
                                 received_at=utcnow(), state="done", attempts=0))
        await asyncio.wait_for(journal_kicks.wait(), 1)

        # PostgreSQL drops the listening session (a restart, a network cut): it comes back.
        pid = listener.server_pid
        assert pid is not None
        async with b.session() as s:
            await s.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await eventually(lambda: _reconnected(listener), timeout=10)
        assert listener.server_pid != pid
        await asyncio.sleep(0.2)
        woke = await row_written_elsewhere(1)
        assert woke < 0.5, woke
    finally:
        await listener.stop()
        await worker.stop()
    assert not listener.connected


async def _more(recorder: Recorder, before: int) -> bool:
    return len(recorder.delivered) > before


async def _reconnected(listener: Listener) -> bool:
    return listener.reconnects >= 1 and listener.connected


async def test_the_listener_waits_for_an_unreachable_server_without_failing() -> None:
    kicks: list[str] = []
    listener = Listener("postgresql+asyncpg://nobody@127.0.0.1:9/none",
                        {OUTBOX_CHANNEL: lambda: kicks.append("outbox")})
    listener.initial_delay = 0.05
    listener.start()
    await asyncio.sleep(0.5)  # several refused connects, backing off
    assert not listener.connected and kicks == []
    await listener.stop()


# -- the processor ------------------------------------------------------------------------------

def _telegram_settings(make_settings: Any, postgres_url: str, **sections: Any) -> Any:
    return make_settings(database_url=postgres_url,
                         telegram={"bot_token": TELEGRAM_TOKEN,
                                   "api_base_url": "http://127.0.0.1:9"}, **sections)


@pytest.fixture
async def two_daemons(make_settings: Any, postgres_url: str) -> AsyncIterator[list[Daemon]]:
    """Two instances' daemons, built (parsers, hooks, filters) but not started: the tests drive
    their journals and processors."""
    settings = _telegram_settings(make_settings, postgres_url)
    daemons = [Daemon(settings), Daemon(settings)]
    for d in daemons:
        await d.store.ensure_schema()
    try:
        yield daemons
    finally:
        for d in daemons:
            await d.processor.stop()
            await d.journal.stop()
            await d.store.dispose()


def _update(user: int, message_id: int, text_: str = "") -> tuple[str, bytes]:
    update_ = {"update_id": 1000 + message_id,
               "message": {"message_id": message_id, "date": 1795000000,
                           "from": {"id": user, "is_bot": False, "first_name": f"User{user}"},
                           "chat": {"id": user, "type": "private"},
                           "text": text_ or f"message {message_id}"}}
    return f"message:{user}:{message_id}", json.dumps(update_).encode()


async def _journal_counts(store: Store) -> Counter[str]:
    async with store.reader() as s:
        return Counter(dict((await s.execute(
            select(InboundJournal.state, func.count()).group_by(InboundJournal.state))).all()))


async def _none_pending(store: Store, total: int) -> bool:
    counts = await _journal_counts(store)
    return counts["pending"] == 0 and sum(counts.values()) == total


async def test_two_processors_store_every_message_once(two_daemons: list[Daemon]) -> None:
    a, b = two_daemons
    for d in two_daemons:
        d.journal.start()
        d.processor.start()
    senders = 120
    accepted = []
    for i in range(1000):  # three in a row from each sender: neighbours race on one customer
        key, raw = _update(100 + (i // 3) % senders, i + 1)
        journal = (a if i % 2 else b).journal
        accepted.append(journal.accept("telegram", key, raw, {"source": "polling"}))
    assert all(await asyncio.gather(*accepted))
    await eventually(lambda: _none_pending(a.store, 1000), timeout=120, interval=0.2)

    assert await _journal_counts(a.store) == Counter({"done": 1000})
    async with a.store.reader() as s:
        assert (await s.execute(select(func.count()).select_from(Message))).scalar_one() == 1000
        assert (await s.execute(select(func.count(func.distinct(Message.journal_id))))
                ).scalar_one() == 1000
        assert (await s.execute(select(func.count()).select_from(Contact))).scalar_one() \
            == senders
        assert (await s.execute(select(func.count()).select_from(Identity))).scalar_one() \
            == senders
        per_contact = dict((await s.execute(
            select(Conversation.contact_id, func.count()).where(Conversation.status == "open")
            .group_by(Conversation.contact_id))).all())
        assert len(per_contact) == senders and set(per_contact.values()) == {1}
        assert (await s.execute(select(func.count()).select_from(Conversation))).scalar_one() \
            == senders
    shares = [d.metrics.registry.get_sample_value("frontdesk_ingest_latency_seconds_count",
                                                  {"channel": "telegram"}) or 0
              for d in two_daemons]
    assert sum(shares) == 1000 and min(shares) > 0  # both instances did part of it


class Rendezvous:
    """An inbound filter that holds each processor until ``n`` have reached it, once: two
    instances then apply their rows at the same moment, past the point of checking what exists."""

    def __init__(self, n: int = 2) -> None:
        self.n = n
        self.arrived = 0
        self.all_here = asyncio.Event()

    async def __call__(self, _s: AsyncSession, _m: InboundMessage, _journal_id: int,
                       _now: datetime) -> bool:
        if not self.all_here.is_set():
            self.arrived += 1
            if self.arrived >= self.n:
                self.all_here.set()
            await asyncio.wait_for(self.all_here.wait(), 10)
        return False


async def _journal(d: Daemon, *updates: tuple[str, bytes]) -> list[int]:
    async with d.store.session() as s:
        rows = [InboundJournal(channel="telegram", remote_id=key, raw=raw,
                               meta={"source": "polling"}, received_at=utcnow(),
                               state="pending", attempts=0) for key, raw in updates]
        s.add_all(rows)
        await s.flush()
        return [r.id for r in rows]


async def test_the_same_new_sender_at_once_in_two_instances_is_retried_not_failed(
        two_daemons: list[Daemon]) -> None:
    a, b = two_daemons
    meet = Rendezvous()
    for d in two_daemons:
        d.inbound_filters.append(meet)
    first, second = await _journal(a, _update(7, 1), _update(7, 2))
    done_a, done_b = await asyncio.gather(a.processor.process_pending([first]),
                                          b.processor.process_pending([second]))
    outcomes = done_a + done_b
    assert sorted(o.retry for o in outcomes) == [False, True]  # one lost the race on the key
    assert all(o.error is None for o in outcomes)
    loser = next(o.journal_id for o in outcomes if o.retry)
    async with a.store.reader() as s:
        row = await s.get_one(InboundJournal, loser)
        assert row.state == "pending" and row.attempts == 1
        assert "uq_identities_channel_address" in (row.error or "")
    [again] = await b.processor.process_pending([loser])
    assert again.error is None and again.message_id is not None
    assert await _journal_counts(a.store) == Counter({"done": 2})
    async with a.store.reader() as s:
        assert (await s.execute(select(func.count()).select_from(Contact))).scalar_one() == 1
        assert (await s.execute(select(func.count()).select_from(Conversation))).scalar_one() == 1
        assert (await s.execute(select(func.count()).select_from(Message))).scalar_one() == 2


async def test_two_messages_of_a_known_customer_at_once_open_one_conversation(
        two_daemons: list[Daemon]) -> None:
    a, b = two_daemons
    [earlier] = await _journal(a, _update(9, 1))
    await a.processor.process_pending([earlier])
    async with a.store.session() as s:  # long resolved: the next message opens a new one
        await s.execute(update(Conversation).values(
            status="resolved", resolved_at=utcnow() - timedelta(days=30)))
    meet = Rendezvous()
    for d in two_daemons:
        d.inbound_filters.append(meet)
    first, second = await _journal(a, _update(9, 2), _update(9, 3))
    done = await asyncio.gather(a.processor.process_pending([first]),
                                b.processor.process_pending([second]))
    assert all(o.error is None and not o.retry for batch in done for o in batch)
    async with a.store.reader() as s:
        statuses = Counter((await s.execute(select(Conversation.status))).scalars())
        assert statuses == Counter({"resolved": 1, "open": 1})
        ids = dict((await s.execute(select(Conversation.status, Conversation.id))).all())
        assert Counter((await s.execute(select(Message.conversation_id))).scalars()) \
            == Counter({ids["resolved"]: 1, ids["open"]: 2})


async def test_a_broken_message_is_still_a_dead_letter(two_daemons: list[Daemon]) -> None:
    a, _b = two_daemons
    [broken] = await _journal(a, ("message:5:1", b"not json"))
    [outcome] = await a.processor.process_pending([broken])
    assert outcome.error is not None and not outcome.retry
    assert await _journal_counts(a.store) == Counter({"failed": 1})


# -- the scheduler ------------------------------------------------------------------------------

async def test_an_acknowledgement_waits_while_another_instance_acknowledges_that_customer(
        postgres_url: str, make_settings: Any, daemon_factory: Any) -> None:
    """Ada's two new conversations wait while another instance holds her lock; Bob's, due in
    the same sweep, is acknowledged meanwhile."""
    clock = FakeClock()
    async with SmtpSink() as sink:
        settings = make_settings(database_url=postgres_url,
                                 email={"outbound": {"port": sink.port}},
                                 acknowledgement={"rate_limits": ["1/1h"]})
        d = await daemon_factory(settings, clock=clock)  # sweeps only when the test says
        for n in (1, 2):
            await send(d.email.smtp.port, mail(subject=f"Matter {n}", msgid=f"<m{n}@example.org>"))
        await send(d.email.smtp.port, mail(frm="Bob <bob@example.org>", subject="Matter 3",
                                           msgid="<m3@example.org>"))
        await eventually(lambda: _none_pending(d.store, 3))
        other = Store(postgres_url)  # another instance, in the middle of acknowledging Ada
        try:
            async with other.session() as held:
                await held.execute(text(f"SELECT pg_advisory_xact_lock({ACK_LOCK_KEYS})"),
                                   {"recipient": "ada@example.org"})
                await d.scheduler.sweep()
                async with d.store.reader() as s:
                    assert list((await s.execute(select(Acknowledgement.recipient))
                                 ).scalars()) == ["bob@example.org"]
                    assert (await s.execute(select(Event).where(
                        Event.kind == "acknowledgement_skipped"))).first() is None
                    due = dict((await s.execute(select(Conversation.subject,
                                                       Conversation.ack_due_at))).all())
                postponed = clock() + timedelta(seconds=1)  # not dropped
                assert due == {"Matter 1": postponed, "Matter 2": postponed, "Matter 3": None}
        finally:
            await other.dispose()
        clock.advance(seconds=2)
        await d.scheduler.sweep()
        async with d.store.reader() as s:
            assert sorted((await s.execute(select(Acknowledgement.recipient))).scalars()) == [
                "ada@example.org", "bob@example.org"]
            [skipped] = (await s.execute(select(Event).where(
                Event.kind == "acknowledgement_skipped"))).scalars()
        assert "rate limit 1/1h for ada@example.org" in skipped.data["reason"]
        await d.outbox.deliver_due()
        await eventually(lambda: _sunk(sink, 2))
        await asyncio.sleep(0.2)
        assert len(sink.messages) == 2


async def _sunk(sink: SmtpSink, n: int) -> bool:
    return len(sink.messages) >= n


# -- the Slack desk, end to end -----------------------------------------------------------------

async def test_two_daemons_post_each_conversation_root_once(
        postgres_url: str, make_settings: Any, daemon_factory: Any) -> None:
    async with FakeSlack() as slack:
        settings = make_settings(database_url=postgres_url,
                                 slack={"bot_token": SLACK_TOKEN, "signing_secret": SIGNING_SECRET,
                                        "channel_id": "C0SUPPORT",
                                        "api_base_url": slack.base_url, "post_interval": "0s"},
                                 daemon={"outbox_poll": "1s"})
        a = await daemon_factory(settings)
        b = await daemon_factory(settings)
        await eventually(lambda: _desks_ready(a, b))
        for d in (a, b):  # each instance LISTENs for the other's work
            assert d.listener is not None
            await d.listener.wait_connected(10)
        sends = []
        for n in range(10):  # a mail and a reply in its thread, into either instance
            into = a if n % 2 else b
            sends.append(send(into.email.smtp.port, mail(
                frm=f"c{n}@example.org", subject=f"Matter {n}", msgid=f"<m{n}@example.org>"),
                sender=f"c{n}@example.org"))
        await asyncio.gather(*sends)
        await eventually(lambda: _none_pending(a.store, 10))
        await asyncio.gather(*[
            send((b if n % 2 else a).email.smtp.port, mail(
                frm=f"c{n}@example.org", subject=f"Re: Matter {n}", body=f"More on {n}",
                msgid=f"<r{n}@example.org>", In_Reply_To=f"<m{n}@example.org>"),
                sender=f"c{n}@example.org") for n in range(10)])
        await eventually(lambda: _none_pending(a.store, 20))
        await eventually(lambda: _slack_done(a.store), timeout=30)
        roots = slack.roots("C0SUPPORT")
        references = Counter(r["text"].split(" · ")[0] for r in roots)
        assert len(references) == 10 and set(references.values()) == {1}
        for root in roots:
            assert len(slack.thread(root["ts"])) == 1  # the reply, once
        async with a.store.reader() as s:
            posted_by = set((await s.execute(
                select(Outbox.claimed_by).where(Outbox.kind == "slack"))).scalars())
        assert posted_by <= {a.instance, b.instance}


async def _desks_ready(*daemons: Daemon) -> bool:
    return all(s.ready for d in daemons for s in d.services)


async def _slack_done(store: Store) -> bool:
    async with store.reader() as s:
        states = Counter((await s.execute(select(Outbox.state)
                                          .where(Outbox.kind == "slack"))).scalars())
    return states["done"] >= 20 and states["pending"] == 0


def test_the_outbox_lease_is_checked(make_settings: Any) -> None:
    from pydantic import ValidationError

    assert make_settings().daemon.outbox_lease == timedelta(minutes=2)
    assert make_settings(daemon={"outbox_lease": "45s"}).daemon.outbox_lease \
        == timedelta(seconds=45)
    with pytest.raises(ValidationError) as refused:
        make_settings(daemon={"outbox_lease": "10s"})
    assert "outbox_lease" in str(refused.value) and 'at least "30s"' in str(refused.value)
