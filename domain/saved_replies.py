"""Saved replies: answers a team gives every day, by name, kept in the store.

``frontdesk saved-reply add/list/remove``, ``/frontdesk saved-reply ...`` and the Slack message
shortcut "Save as a saved reply" write them; the ``[saved_replies]`` table of the config file still
works beside them. A name saved in the store is the one used when the config file has the same
name (the store's can be changed without a restart). Adding and removing are audited.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.storage.models import Event, SavedReply

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TEXT = 10_000


class SavedReplyError(ValueError):
    """A name or text that cannot be saved, or a name that is not saved."""


@dataclass(frozen=True)
class SavedReplyView:
    name: str
    text: str
    source: str  # store | config

    def view(self) -> dict[str, Any]:
        """The ``saved-reply list --json`` element."""
        return {"name": self.name, "text": self.text, "source": self.source}


def reply_name(name: str) -> str:
    """A saved reply's name as stored: letters, digits, ``-`` and ``_``, lower-cased."""
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise SavedReplyError(f"{name!r} is not a saved reply's name: 1-64 letters, digits, "
                              "- and _")
    return name.lower()


async def add_saved_reply(session: AsyncSession, name: str, text: str, *, actor: str,
                          now: datetime) -> bool:
    """Save ``text`` under ``name``; True when new, False when it replaced the saved text."""
    name, text = reply_name(name), text.strip()
    if not text:
        raise SavedReplyError("the saved reply is empty")
    if len(text) > MAX_TEXT:
        raise SavedReplyError(f"the saved reply is longer than {MAX_TEXT:,} characters")
    found = await session.get(SavedReply, name)
    if found is None:
        session.add(SavedReply(name=name, text=text, created_by=actor[:256], created_at=now,
                               updated_at=now))
    else:
        found.text, found.updated_at = text, now
    session.add(Event(kind="saved_reply_saved", actor=actor[:256], created_at=now,
                      data={"name": name, "replaced": found is not None}))
    await session.flush()
    return found is None


async def remove_saved_reply(session: AsyncSession, name: str, *, actor: str, now: datetime,
                             config: Mapping[str, str]) -> None:
    name = reply_name(name)
    found = await session.get(SavedReply, name)
    if found is None:
        if name in config:
            raise SavedReplyError(f"{name!r} is in the config file's [saved_replies]; remove it "
                                  "there")
        raise SavedReplyError(f"there is no saved reply called {name!r}")
    await session.delete(found)
    session.add(Event(kind="saved_reply_removed", actor=actor[:256], created_at=now,
                      data={"name": name}))
    await session.flush()


async def saved_replies(session: AsyncSession,
                        config: Mapping[str, str]) -> list[SavedReplyView]:
    """Every saved reply by name: the store's, and the config file's not saved in the store."""
    stored = {r.name: r.text for r in (await session.execute(select(SavedReply))).scalars()}
    views = [SavedReplyView(n, t, "store") for n, t in stored.items()]
    views += [SavedReplyView(n, t, "config") for n, t in config.items() if n not in stored]
    return sorted(views, key=lambda v: v.name)


async def find_saved_reply(session: AsyncSession, config: Mapping[str, str],
                           name: str) -> str | None:
    """The text saved under ``name`` (the store's first, then the config file's), or None."""
    try:
        key = reply_name(name)
    except SavedReplyError:
        return None
    found = await session.get(SavedReply, key)
    return found.text if found is not None else config.get(key)
