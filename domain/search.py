"""Full-text search over conversations, so staff can see how a similar problem was solved.

Messages (subject and text, internal notes included) are indexed by the store: an FTS5 table kept
in step by triggers on SQLite, a GIN index on ``to_tsvector('simple', ...)`` on PostgreSQL (both
made by migration 0002_slack). Only what people wrote is searched: customers' and staff's
messages and notes, never frontdesk's own acknowledgements, surveys and reminders (author
``system``), which would otherwise match every conversation.

The query: words are matched as prefixes ("refund" finds "refunded") and all of them must occur in
one message; ``"left the warehouse"`` in double quotes is a phrase (those words in that order);
``OR`` between two terms takes either (``refund OR return damaged``: refund or return, and
damaged); ``tag:refund`` keeps the conversations tagged ``refund`` (alone, it lists them, newest
first). Results are conversations, best match first, each with a snippet of its best-matching
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


_TAG_TERM = re.compile(r"(?<!\S)tag:(\S*)", re.IGNORECASE)


def split_tags(query: str) -> tuple[str, list[str]]:
    """The query without its ``tag:NAME`` terms, and the tags they name."""
    tags = [t.lower() for t in _TAG_TERM.findall(query)]
    if any(not re.fullmatch(r"[a-z0-9_:-]{1,50}", t) for t in tags):
        raise InvalidQuery("tag: is followed by a tag, like tag:refund")
    return _TAG_TERM.sub(" ", query), tags


async def search_conversations(session: AsyncSession, query: str, *,
                               limit: int = 20) -> list[SearchHit]:
    """Conversations with a message people wrote that matches ``query``, best first."""
    rest, tags = split_tags(query)
    terms = parse_query(rest)
    if not terms and not tags:
        raise InvalidQuery("search for at least one word or tag:NAME")
    dialect = session.get_bind().dialect.name
    if dialect not in ("sqlite", "postgresql"):  # pragma: no cover - the store runs on these
        raise InvalidQuery(f"full-text search is not available on {dialect}")
    if not terms:
        best = await _tagged(session, dialect, tags, limit)
    elif dialect == "sqlite":
        best = await _sqlite(session, terms, tags, limit)
    else:
        best = await _postgresql(session, terms, tags, limit)
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


def _having_tags(dialect: str, tags: list[str]) -> tuple[str, dict[str, str]]:
    """SQL that keeps the conversations ``c`` tagged with every one of ``tags``."""
    params = {f"tag{i}": t for i, t in enumerate(tags)}
    if dialect == "sqlite":
        each = "EXISTS (SELECT 1 FROM json_each(c.tags) WHERE json_each.value = :{})"
    else:
        each = "(c.tags::jsonb) @> jsonb_build_array(CAST(:{} AS text))"
    return "".join(" AND " + each.format(k) for k in params), params


async def _tagged(session: AsyncSession, dialect: str, tags: list[str],
                  limit: int) -> list[tuple[int, int, str]]:
    """Conversations with every one of ``tags``, newest first, each with its first message
    people wrote as the snippet."""
    having, params = _having_tags(dialect, tags)
    rows = (await session.execute(text(
        "SELECT c.id, (SELECT min(m.id) FROM messages m WHERE m.conversation_id = c.id "
        "AND m.author != 'system') AS first FROM conversations c WHERE 1 = 1" + having +
        " ORDER BY c.updated_at DESC, c.id DESC LIMIT :n"), {**params, "n": limit})).all()
    firsts = [int(m) for _c, m in rows if m is not None]
    texts: dict[int, str] = {}
    if firsts:
        texts = {i: " ".join(t.split())[:160] for i, t in (await session.execute(
            text("SELECT id, text FROM messages WHERE id IN (" + ",".join(map(str, firsts))
                 + ")"))).all()}
    return [(int(c), int(m or 0), texts.get(int(m or 0), "")) for c, m in rows]


async def _sqlite(session: AsyncSession, terms: list[Clause], tags: list[str],
                  limit: int) -> list[tuple[int, int, str]]:
    match = _fts5(terms)
    having, params = _having_tags("sqlite", tags)
    rows = (await session.execute(text(
        "SELECT m.id, m.conversation_id FROM messages_fts JOIN messages m "
        "ON m.id = messages_fts.rowid JOIN conversations c ON c.id = m.conversation_id "
        "WHERE messages_fts MATCH :q AND m.author != 'system'" + having +
        " ORDER BY rank, m.id DESC LIMIT :n"),
        {"q": match, "n": _CANDIDATES, **params})).all()
    chosen = _best_per_conversation(list(rows), limit)
    if not chosen:
        return []
    ids = [m for _, m in chosen]
    snippets: dict[int, str] = dict((await session.execute(text(
        "SELECT rowid, snippet(messages_fts, -1, :a, :b, '…', 16) FROM messages_fts "
        "WHERE messages_fts MATCH :q AND rowid IN (" + ",".join(str(i) for i in ids) + ")"),
        {"q": match, "a": MARK_START, "b": MARK_END})).all())
    return [(c, m, snippets.get(m, "")) for c, m in chosen]


async def _postgresql(session: AsyncSession, terms: list[Clause], tags: list[str],
                      limit: int) -> list[tuple[int, int, str]]:
    tsquery = _tsquery(terms)
    having, params = _having_tags("postgresql", tags)
    rows = (await session.execute(text(
        f"SELECT m.id, m.conversation_id FROM messages m JOIN conversations c "
        f"ON c.id = m.conversation_id, to_tsquery('simple', :q) query "
        f"WHERE {_PG_DOCUMENT} @@ query AND m.author != 'system'{having} "
        f"ORDER BY ts_rank({_PG_DOCUMENT}, query) DESC, m.id DESC LIMIT :n"),
        {"q": tsquery, "n": _CANDIDATES, **params})).all()
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
