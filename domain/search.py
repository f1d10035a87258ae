"""Full-text search over conversations, so staff can see how a similar problem was solved.

Messages (subject and text, internal notes included) are indexed by the store: an FTS5 table kept
in step by triggers on SQLite, a GIN index on ``to_tsvector('simple', ...)`` on PostgreSQL (both
made by migration 0002_slack). Only what people wrote is searched: customers' and staff's
messages and notes, never frontdesk's own acknowledgements, surveys and reminders (author
``system``), which would otherwise match every conversation.

The query: words are matched as prefixes ("refund" finds "refunded") and all of them must occur in
one message; ``"left the warehouse"`` in double quotes is a phrase (those words in that order);
``OR`` between two terms takes either (``refund OR return damaged``: refund or return, and
damaged). Results are conversations, best match first, each with a snippet of its best-matching
message; matched words are marked :data:`MARK_START` ... :data:`MARK_END` for the caller to show as
it likes (:func:`marked`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.domain.conversations import iso
from frontdesk.storage.models import Conversation

log = logging.getLogger(__name__)

MARK_START, MARK_END = "\u27e6", "\u27e7"  # ⟦ ⟧: unlikely in customer text
_WORD = re.compile(r"\w+", re.UNICODE)
_CANDIDATES = 200
_PG_DOCUMENT = ("to_tsvector('simple', coalesce(m.\"subject\", '') || ' ' || "
                "coalesce(m.\"text\", ''))")


class InvalidQuery(ValueError):
    pass


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    reference: str
    subject: str
    status: str
    channel: str
    contact_name: str
    created_at: datetime
    message_id: int
    snippet: str
    """The best-matching message's words around the match, matches between the marks."""

    def view(self) -> dict[str, Any]:
        """The ``frontdesk search --json`` shape."""
        return {"id": self.conversation_id, "reference": self.reference,
                "subject": self.subject, "status": self.status, "channel": self.channel,
                "contact": self.contact_name, "created_at": iso(self.created_at),
                "message_id": self.message_id, "snippet": marked(self.snippet, "", "")}


def marked(snippet: str, start: str, end: str) -> str:
    """The snippet with its match marks replaced by ``start`` and ``end``."""
    return snippet.replace(MARK_START, start).replace(MARK_END, end)


def words(query: str) -> list[str]:
    found = [w.lower() for w in _WORD.findall(query)]
    return [w for w in found if w.strip("_")][:16]


@dataclass(frozen=True)
class Term:
    """A word (matched as a prefix) or a phrase (its words in order, the last as a prefix)."""

    words: tuple[str, ...]


Clause = tuple[Term, ...]
"""Terms of which any may match (joined by ``OR``)."""

_TOKEN = re.compile(r'"([^"]*)"|(\S+)')
MAX_TERMS = 16


def parse_query(query: str) -> list[Clause]:
    """The query as clauses that must all match, each a choice of terms (see the module doc)."""
    clauses: list[list[Term]] = []
    join_next = False
    count = 0
    for phrase, bare in _TOKEN.findall(query):
        if bare == "OR":  # between two terms; a leading or trailing one joins nothing
            join_next = bool(clauses)
            continue
        found = tuple(words(phrase or bare))
        if not found or count >= MAX_TERMS:
            continue
        count += 1
        term = Term(found)
        if join_next:
            clauses[-1].append(term)
        else:
            clauses.append([term])
        join_next = False
    return [tuple(c) for c in clauses]


async def search_conversations(session: AsyncSession, query: str, *,
                               limit: int = 20) -> list[SearchHit]:
    """Conversations with a message people wrote that matches ``query``, best first."""
    terms = parse_query(query)
    if not terms:
        raise InvalidQuery("search for at least one word")
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        best = await _sqlite(session, terms, limit)
    elif dialect == "postgresql":
        best = await _postgresql(session, terms, limit)
    else:  # pragma: no cover - the store only runs on these two
        raise InvalidQuery(f"full-text search is not available on {dialect}")
    if not best:
        return []
    conversations = {c.id: c for c in (await session.execute(
        select(Conversation).where(Conversation.id.in_([b[0] for b in best]))
    )).unique().scalars()}
    hits = []
    for conversation_id, message_id, snippet in best:
        c = conversations.get(conversation_id)
        if c is None:
            continue
        hits.append(SearchHit(c.id, c.reference, c.subject, c.status, c.channel, c.contact.name,
                              c.created_at, message_id, _tidy(snippet)))
    return hits


def _best_per_conversation(rows: list[Any], limit: int) -> list[tuple[int, int]]:
    seen: dict[int, int] = {}
    for message_id, conversation_id in rows:
        if conversation_id not in seen:
            seen[conversation_id] = message_id
            if len(seen) >= limit:
                break
    return list(seen.items())


def _fts5(clauses: list[Clause]) -> str:
    """FTS5 syntax: ``"refund"*``, a phrase ``"left the warehouse"*``, ``(a OR b) AND c``."""
    def term(t: Term) -> str:
        return '"' + " ".join(t.words) + '"*'

    return " AND ".join(term(c[0]) if len(c) == 1 else "(" + " OR ".join(map(term, c)) + ")"
                        for c in clauses)


def _tsquery(clauses: list[Clause]) -> str:
    """PostgreSQL tsquery syntax: ``refund:*``, a phrase ``(left <-> the <-> warehouse:*)``."""
    def term(t: Term) -> str:
        parts = [*t.words[:-1], f"{t.words[-1]}:*"]
        return parts[0] if len(parts) == 1 else "(" + " <-> ".join(parts) + ")"

    return " & ".join(term(c[0]) if len(c) == 1 else "(" + " | ".join(map(term, c)) + ")"
                      for c in clauses)


async def _sqlite(session: AsyncSession, terms: list[Clause],
                  limit: int) -> list[tuple[int, int, str]]:
    match = _fts5(terms)
    rows = (await session.execute(text(
        "SELECT m.id, m.conversation_id FROM messages_fts JOIN messages m "
        "ON m.id = messages_fts.rowid WHERE messages_fts MATCH :q AND m.author != 'system' "
        "ORDER BY rank, m.id DESC LIMIT :n"), {"q": match, "n": _CANDIDATES})).all()
    chosen = _best_per_conversation(list(rows), limit)
    if not chosen:
        return []
    ids = [m for _, m in chosen]
    snippets: dict[int, str] = dict((await session.execute(text(
        "SELECT rowid, snippet(messages_fts, -1, :a, :b, '…', 16) FROM messages_fts "
        "WHERE messages_fts MATCH :q AND rowid IN (" + ",".join(str(i) for i in ids) + ")"),
        {"q": match, "a": MARK_START, "b": MARK_END})).all())
    return [(c, m, snippets.get(m, "")) for c, m in chosen]


async def _postgresql(session: AsyncSession, terms: list[Clause],
                      limit: int) -> list[tuple[int, int, str]]:
    tsquery = _tsquery(terms)
    rows = (await session.execute(text(
        f"SELECT m.id, m.conversation_id FROM messages m, to_tsquery('simple', :q) query "
        f"WHERE {_PG_DOCUMENT} @@ query AND m.author != 'system' "
        f"ORDER BY ts_rank({_PG_DOCUMENT}, query) DESC, m.id DESC LIMIT :n"),
        {"q": tsquery, "n": _CANDIDATES})).all()
    chosen = _best_per_conversation(list(rows), limit)
    if not chosen:
        return []
    ids = [m for _, m in chosen]
    options = (f"StartSel={MARK_START}, StopSel={MARK_END}, MaxWords=24, MinWords=8, "
               "MaxFragments=1, FragmentDelimiter=…")
    snippets: dict[int, str] = dict((await session.execute(text(
        "SELECT m.id, ts_headline('simple', coalesce(m.subject, '') || ' — ' || "
        "coalesce(m.text, ''), to_tsquery('simple', :q), :o) FROM messages m "
        "WHERE m.id = ANY(:ids)"), {"q": tsquery, "o": options, "ids": ids})).all())
    return [(c, m, snippets.get(m, "")) for c, m in chosen]


def _tidy(snippet: str) -> str:
    return " ".join(snippet.split())
