"""Quoted replies: the new part of a mail, and its text with the quoted history folded away.

Customers answer above (or below) the whole earlier exchange. frontdesk keeps the full text and
stores the new part beside it; the CLI and the Slack desk show the new part followed by
``[quoted text hidden]``. The split is mail-parser-reply's (maintained, many languages: the
"On ... wrote:" and "From:/Sent:" headers mail clients write, in ``email.reply_languages``); a
trailing block of ``>`` lines without such a header is folded too. HTML-only mail is split on
the text made from its HTML, where the quote header survives as text.

Only the first 16 KB of a text are searched for the quote header (the parser's cost grows with
the length): a reply whose new part is longer than that is kept whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from mailparser_reply.parser import EmailMessage

QUOTE_FOLD = "[quoted text hidden]"
_SCAN_LIMIT = 16_384
_QUOTE_LINE = re.compile(r"^\s*>")


class _Splitter(EmailMessage):
    """mail-parser-reply's message, without the signature and disclaimer search it does for
    every fragment (we only need where the first reply ends, and that search costs the most)."""

    def _process_signatures_disclaimers(self, text: str) -> tuple[list[str], str]:
        return [], ""


def new_part(text: str, languages: Sequence[str] = ("en",)) -> str | None:
    """The new part of a reply, or None when there is no quote to fold (all of it is new)."""
    if not text or not text.strip():
        return None
    head = text[:_SCAN_LIMIT]
    if len(text) > _SCAN_LIMIT and "\n" in head:
        head = head[: head.rfind("\n")]
    lines = head.replace("\r\n", "\n").split("\n")
    latest = _Splitter(text="\n".join(lines), languages=list(languages)).read().latest_reply
    keep = _prefix_lines(lines, latest) if latest else len(lines)
    if keep >= len(lines) and len(head) < len(text):
        return None  # no quote header in the part searched: keep it all
    kept = lines[:keep]
    while kept and (not kept[-1].strip() or _QUOTE_LINE.match(kept[-1])):
        kept.pop()  # a trailing "> ..." block (and blank lines) with no header above it
    new = "\n".join(kept).strip("\n").rstrip()
    if not new.strip() or new.strip() == text.strip():
        return None
    return new


def _prefix_lines(lines: list[str], latest: str) -> int:
    """How many of the original lines make up the parser's latest reply (which it returns with
    every line stripped): the original keeps its indentation and blank lines."""
    wanted = [line.strip() for line in latest.split("\n")]
    got: list[str] = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not got and not stripped:
            continue  # leading blank lines
        got.append(stripped)
        if got == wanted:
            return index + 1
        if len(got) >= len(wanted) or got[-1] != wanted[len(got) - 1]:
            break
    return len(lines)  # could not line them up: keep everything


def folded(text: str, text_new: str | None) -> str:
    """The new part, then ``[quoted text hidden]`` where the quote was (the text itself when it
    has no quote)."""
    if not text_new or text_new.strip() == (text or "").strip():
        return text or ""
    return f"{text_new.rstrip()}\n\n{QUOTE_FOLD}"


def display_text(message: Any) -> str:
    """What a person reads first of a stored message or its JSON view (``text``/``text_new``):
    for the Slack desk, the CLI and notifications."""
    if isinstance(message, dict):
        return folded(message.get("text") or "", message.get("text_new"))
    return folded(getattr(message, "text", "") or "", getattr(message, "text_new", None))
