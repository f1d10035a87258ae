"""Text helpers the chat-like channels share (SMS, WhatsApp, voice, Telegram). Pure, no I/O.

Remote APIs limit a message's length in UTF-16 code units (Twilio: 1,600 characters a message,
Telegram: 4,096), so a long staff reply is split into several messages, in order, preferably at
a paragraph, line, sentence or word break.
"""

from __future__ import annotations

import re

_SPACE = re.compile(r"\s+")


def utf16_len(text: str) -> int:
    """Length as Twilio and Telegram count it: an emoji outside the BMP counts twice."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _fit(text: str, limit: int) -> int:
    """The largest ``i`` with ``utf16_len(text[:i]) <= limit``."""
    if len(text) <= limit and utf16_len(text) <= limit:
        return len(text)
    used = 0
    for i, ch in enumerate(text):
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > limit:
            return i
    return len(text)


def split_text(text: str, limit: int) -> list[str]:
    """``text`` in parts of at most ``limit`` UTF-16 units, in order, none empty.

    A part ends at the last paragraph break, line break, sentence end or space in its second
    half; a text with none there is cut hard.
    """
    if limit < 2:
        raise ValueError("limit must be at least 2")
    text = text.strip()
    if utf16_len(text) <= limit:
        return [text] if text else []
    parts: list[str] = []
    rest = text
    while utf16_len(rest) > limit:
        cut = _fit(rest, limit)
        window = rest[:cut]
        end = -1
        for separator in ("\n\n", "\n", ". ", "! ", "? ", " "):
            found = window.rfind(separator)
            if found >= cut // 2:
                end = found + (1 if separator[0] in ".!?" else 0)
                break
        if end <= 0:
            end = cut
        part = rest[:end].rstrip()
        if part:
            parts.append(part)
        rest = rest[end:].lstrip()
    if rest:
        parts.append(rest)
    return parts


def preview(text: str, length: int = 60) -> str:
    """The first words of ``text`` on one line, for a conversation subject."""
    flat = _SPACE.sub(" ", text).strip()
    if len(flat) <= length:
        return flat
    cut = flat[: length - 1]
    space = cut.rfind(" ")
    if space >= length // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.") + "…"


def template_words(reference: str, name: str, subject: str) -> dict[str, str]:
    """The values of a re-engagement template's placeholders (``{reference}``, ``{name}``,
    ``{first_name}``, ``{subject}``), with plain words where one is unknown."""
    name = " ".join(name.split()) or "there"
    return {"reference": reference or "your request", "name": name,
            "first_name": name.split()[0], "subject": subject or "your request"}
