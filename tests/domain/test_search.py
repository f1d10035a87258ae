"""Full-text search over conversations (FTS5 on SQLite, tsvector on PostgreSQL), and the staff
actions of the command line: ``frontdesk search|resolve|reopen|assign|snooze``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from frontdesk.daemon.cli.main import main
from frontdesk.domain.search import InvalidQuery, marked, search_conversations
from frontdesk.storage.models import Event
from tests.support.helpers import detail, eventually, mail, processed, send

MAILS = [
    ("ada@example.org", "Order 1234 never arrived", "The parcel with my kettle never came."),
    ("bob@example.net", "Refund please", "I returned the broken toaster, I want my refund."),
    ("cy@example.net", "Kettle leaks", "My new kettle leaks water from the bottom."),
]


async def _ingest(d: Any) -> None:
    for i, (sender, subject, body) in enumerate(MAILS):
        await send(d.email.smtp.port, mail(frm=sender, subject=subject, body=body,
                                           msgid=f"<s{i}@example.org>"), sender=sender)
    await eventually(lambda: _all_processed(d, len(MAILS)))


async def _all_processed(d: Any, n: int) -> bool:
    from tests.support.helpers import conversations

    return await processed(d.store) and len(await conversations(d.store)) >= n


async def test_search_finds_earlier_conversations_by_their_words(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any) -> None:
    d = await daemon_factory(make_settings(database_url=database_url), clock=clock)
    await _ingest(d)
    async with d.store.reader() as s:
        kettles = await search_conversations(s, "kettle")
        refund = await search_conversations(s, "refund toast")  # words as prefixes
        both = await search_conversations(s, "kettle leaks")
        none = await search_conversations(s, "teapot")
        with pytest.raises(InvalidQuery):
            await search_conversations(s, " ?! ")
    assert sorted(h.reference for h in kettles) == ["FD-1", "FD-3"]
    assert [h.reference for h in both] == ["FD-3"]
    assert none == []
    [hit] = refund
    assert (hit.reference, hit.subject, hit.status) == ("FD-2", "Refund please", "open")
    assert "[toaster]" in marked(hit.snippet, "[", "]")
    assert "toaster" in hit.view()["snippet"] and "⟦" not in hit.view()["snippet"]
    async with d.store.reader() as s:  # the store's own query syntax in the words is only words
        assert [h.reference for h in await search_conversations(s, 'leaks" NEAR "x*')] == []
        assert [h.reference for h in await search_conversations(s, "leaks & (water")] == \
            ["FD-3"]

async def test_phrases_or_and_only_what_people_wrote(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any) -> None:
    settings = make_settings(database_url=database_url, scheduler={"enabled": True})
    d = await daemon_factory(settings, clock=clock)
    await _ingest(d)

    async def acknowledged() -> bool:
        shown = [await detail(d.store, n) for n in (1, 2, 3)]
        return all(any(m["author"] == "system" for m in c["messages"]) for c in shown)

    await eventually(acknowledged)  # each has frontdesk's own reply naming its reference
    async with d.store.reader() as s:
        async def refs(query: str) -> list[str]:
            return sorted(h.reference for h in await search_conversations(s, query))

        assert await refs("reference") == []  # the acknowledgements' words are not searched
        assert await refs("automatic") == []
        assert await refs('"kettle leaks"') == ["FD-3"]  # a phrase: those words in that order
        assert await refs('"leaks kettle"') == []
        assert await refs('"my new kett"') == ["FD-3"]  # the phrase's last word is a prefix
        assert await refs("toaster OR parcel") == ["FD-1", "FD-2"]
        assert await refs("toaster OR parcel kettle") == ["FD-1"]  # (toaster or parcel), kettle
        assert await refs("OR kettle OR") == ["FD-1", "FD-3"]  # an OR at either end joins nothing



def _config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "frontdesk.toml"
    path.write_text(f'[database]\nurl = "{database_url}"\n\n[daemon]\n'
                    f'data_dir = "{tmp_path / "data"}"\n\n[sla]\nbusiness_hours = "always"\n'
                    'timezone = "UTC"\n')
    return path


def _store_mail(make_settings: Any, database_url: str) -> None:
    from frontdesk.daemon.process.app import Daemon

    async def run() -> None:
        d = Daemon(make_settings(database_url=database_url))
        await d.start()
        try:
            await _ingest(d)
        finally:
            await d.stop()

    asyncio.run(run())


def test_cli_search_and_actions(database_url: str, make_settings: Any, tmp_path: Path,
                                capsys: Any) -> None:
    _store_mail(make_settings, database_url)
    config = str(_config(tmp_path, database_url))
    assert main(["search", "kettle", "leaks", "--json", "-c", config]) == 0
    [hit] = json.loads(capsys.readouterr().out)
    assert (hit["reference"], hit["subject"], hit["status"]) == ("FD-3", "Kettle leaks", "open")
    assert "kettle" in hit["snippet"].lower()
    assert main(["search", "refund", "-c", config]) == 0
    out = capsys.readouterr().out
    assert out.startswith("    FD-2  open     email") and "[refund]" in out.lower()
    assert main(["search", "teapot", "-c", config]) == 0
    assert "no conversation mentions 'teapot'" in capsys.readouterr().out

    assert main(["resolve", "FD-2", "--as", "grace", "-c", config]) == 0
    assert capsys.readouterr().out.strip() == "FD-2 resolved"
    assert main(["resolve", "FD-2", "-c", config]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert main(["assign", "FD-1", "Alan Turing", "--as", "grace", "-c", config]) == 0
    assert main(["snooze", "FD-1", "2h", "--as", "grace", "-c", config]) == 0
    assert main(["reopen", "2", "--as", "grace", "-c", config]) == 0
    assert main(["snooze", "FD-1", "soon", "-c", config]) == 1
    assert "is not a snooze" in capsys.readouterr().err
    assert main(["resolve", "FD-99", "-c", config]) == 1
    assert "no conversation FD-99" in capsys.readouterr().err

    async def audit() -> list[tuple[str, str]]:
        from frontdesk.storage.db import Store

        store = Store(database_url)
        try:
            async with store.reader() as s:
                rows = (await s.execute(select(Event).where(Event.actor == "grace")
                                        .order_by(Event.id))).scalars().all()
            shown = await detail(store, 1)
        finally:
            await store.dispose()
        assert shown["assignee"] == "Alan Turing" and shown["status"] == "snoozed"
        return [(e.kind, e.data.get("via")) for e in rows]

    assert asyncio.run(audit()) == [("conversation_resolved", "cli"),
                                    ("conversation_assigned", "cli"),
                                    ("conversation_snoozed", "cli"),
                                    ("conversation_reopened", "cli")]
