#!/usr/bin/env python3
"""The scheduler's sweep: its cost follows the due conversations, not the open ones.

For each size (100,000 and 1,000,000 open conversations by default):

1. builds a fresh store (SQLite in a temp dir, or the PostgreSQL database given with
   ``--database-url``) at the newest migration and bulk-inserts the open conversations, each with
   a running first-response clock; ``--due`` of them (1,000) are past their due time, the rest are
   planned and due later;
2. prints the store's plan for the sweep's two claims (due rows by ``next_due_at``, changed rows
   by the partial index ``ix_conversations_sla_dirty``);
3. runs one sweep of the real scheduler (``frontdesk.daemon.process.scheduler.Scheduler``
   of a daemon that is built, not started) and times it: every due conversation gets its
   escalation level 1 (an event and an outbox row to the person on call), in batches of
   ``scheduler.batch_size``;
4. runs a second sweep (nothing due: the cost of a sweep with no work), then puts the due rows
   back and sweeps them once more under tracemalloc for the sweep's peak Python memory (timed
   apart: tracemalloc slows Python down); reports the process's peak RSS too.

Usage (with the venv's python)::

    python -m benchmarks.scheduler_sweep [--open 100000 1000000] [--due 1000]
                                         [--database-url postgresql+asyncpg://...]

The claim is: the time of a sweep stays about the same from 100,000 to 1,000,000 open
conversations, because it reads only due (and changed) rows through their indexes.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, text, update

from frontdesk.daemon.process.app import Daemon
from frontdesk.daemon.process.registry import Settings
from frontdesk.storage.models import Contact, Conversation, Event, Identity, Outbox

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
CHUNK = 20_000


def settings(url: str, data_dir: Path) -> Settings:
    return Settings.model_validate({
        "database": {"url": url, "sqlite_synchronous": "normal"},
        "email": {"inbox_addresses": ["support@example.com"]},
        "daemon": {"data_dir": str(data_dir)},
        "sla": {"business_hours": "always", "timezone": "UTC", "first_response": "1h"},
        "escalation": [{"after": "0s", "notify": [], "email": "oncall@example.com"}],
        "scheduler": {"batch_size": 200},
    })


def _clock(start: datetime) -> dict[str, Any]:
    return {"kind": "first_response", "since": start.isoformat(), "target": 3600.0,
            "consumed": 0.0, "running_since": start.isoformat(),
            "due": (start + timedelta(hours=1)).isoformat(), "warned": True, "level": 0}


def _rows(first: int, count: int, due: int) -> list[dict[str, Any]]:
    rows = []
    for n in range(first, first + count):
        start = NOW - timedelta(hours=2) if n <= due else NOW - timedelta(minutes=10)
        breach = start + timedelta(hours=1)
        rows.append({
            "id": n, "status": "open", "priority": "normal", "subject": f"Order {n}",
            "channel": "email", "inbox_address": "support@example.com", "contact_id": 1,
            "created_at": start, "updated_at": start, "last_customer_message_at": start,
            "first_response_due_at": breach, "escalation_level": 0,
            "escalation_due_at": breach, "next_due_at": breach, "sla_checked_at": start,
            "sla_policy": "default", "sla_state": {"clocks": {"response": _clock(start)}},
        })
    return rows


async def fill(d: Daemon, total: int, due: int) -> float:
    started = time.perf_counter()
    async with d.store.session() as s:
        await s.execute(insert(Contact).values(id=1, name="Ada", tags={}, created_at=NOW,
                                               updated_at=NOW))
        await s.execute(insert(Identity).values(contact_id=1, channel="email",
                                                address="ada@example.org", created_at=NOW))
    table = Conversation.__table__
    for first in range(1, total + 1, CHUNK):
        async with d.store.session() as s:
            await s.execute(insert(table), _rows(first, min(CHUNK, total - first + 1), due))
    if d.store.dialect == "postgresql":
        async with d.store.engine.connect() as conn:
            await conn.execute(text("COMMIT"))
            await conn.execute(text("ANALYZE conversations"))
    else:
        async with d.store.session() as s:
            await s.execute(text("ANALYZE"))
    return time.perf_counter() - started


async def reset(d: Daemon, due: int) -> None:
    """Put the due conversations back as they were before the sweep."""
    async with d.store.session() as s:
        await s.execute(delete(Outbox))
        await s.execute(delete(Event))
        for first in range(1, due + 1, CHUNK):
            for row in _rows(first, min(CHUNK, due - first + 1), due):
                await s.execute(update(Conversation).where(Conversation.id == row.pop("id"))
                                .values(**row))


async def plans(d: Daemon) -> list[str]:
    now = NOW.replace(tzinfo=None).isoformat(sep=" ") if d.store.dialect == "sqlite" \
        else f"'{NOW.isoformat()}'"
    if d.store.dialect == "sqlite":
        now = f"'{now}'"
    explain = "EXPLAIN QUERY PLAN" if d.store.dialect == "sqlite" else "EXPLAIN"
    lock = "" if d.store.dialect == "sqlite" else " FOR UPDATE SKIP LOCKED"
    queries = [
        f"SELECT id FROM conversations WHERE next_due_at <= {now} ORDER BY next_due_at "
        f"LIMIT 200{lock}",
        f"SELECT id FROM conversations WHERE updated_at <> sla_checked_at LIMIT 200{lock}",
    ]
    lines = []
    async with d.store.engine.begin() as conn:
        if d.store.dialect == "postgresql":  # as the scheduler's claim does
            await conn.execute(text("SET LOCAL enable_seqscan = off"))
        for q in queries:
            rows = (await conn.execute(text(f"{explain} {q}"))).all()
            lines.append(q)
            lines.extend("    " + str(r[-1]) for r in rows)
    return lines


async def one_size(url: str, total: int, due: int, work: Path) -> dict[str, Any]:
    clock = {"now": NOW}
    d = Daemon(settings(url, work), clock=lambda: clock["now"])
    try:
        await d.store.ensure_schema()
        async with d.store.session() as s:  # a PostgreSQL database given may hold an earlier run
            for model in (Outbox, Event, Conversation, Identity, Contact):
                await s.execute(delete(model))
        filled = await fill(d, total, due)
        for line in await plans(d):
            print("  " + line)
        started = time.perf_counter()
        done = await d.scheduler.sweep()
        first = time.perf_counter() - started
        started = time.perf_counter()
        idle = await d.scheduler.sweep()
        second = time.perf_counter() - started
        await reset(d, due)  # the same sweep again, to measure its memory (tracemalloc is slow)
        tracemalloc.start()
        again = await d.scheduler.sweep()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert again.get("escalation", 0) == done.get("escalation", 0)
        return {"open": total, "due": due, "fill_s": filled, "sweep_s": first,
                "escalated": done.get("escalation", 0), "idle_sweep_s": second,
                "idle_actions": sum(v for k, v in idle.items() if k != "planned"),
                "peak_mb": peak / 1e6}
    finally:
        await d.store.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--open", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--due", type=int, default=1000)
    parser.add_argument("--database-url", default="",
                        help="a PostgreSQL database to use (emptied first); default: SQLite")
    args = parser.parse_args()
    results = []
    for total in args.open:
        work = Path(tempfile.mkdtemp(prefix="frontdesk-sweep-"))
        try:
            url = args.database_url or f"sqlite+aiosqlite:///{work}/frontdesk.db"
            print(f"{total:,} open conversations, {args.due:,} due "
                  f"({'PostgreSQL' if args.database_url else 'SQLite'}):")
            result = await one_size(url, total, args.due, work)
            results.append(result)
            print(f"  filled in {result['fill_s']:.1f} s; sweep: {result['sweep_s'] * 1000:.0f} ms "
                  f"for {result['escalated']:,} escalations; idle sweep "
                  f"{result['idle_sweep_s'] * 1000:.1f} ms ({result['idle_actions']} actions); "
                  f"peak Python memory in the sweep {result['peak_mb']:.1f} MB")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the process: {rss:.0f} MB")
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(f"{b['open'] / a['open']:.0f}x the open conversations: sweep "
              f"{b['sweep_s'] / a['sweep_s']:.2f}x the time")


if __name__ == "__main__":
    asyncio.run(main())
