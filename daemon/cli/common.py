"""What the command line's modules share: settings from ``-c``, the store, JSON out, failures,
and text from outside made safe for a terminal.

Exit codes: 0 success, 1 for a :class:`Failure` (or anything else that went wrong), 2 for a usage
error (:class:`Parser` says so and exits).

Customers write subjects, names, addresses and bodies; relays and APIs write error texts. None of
it may drive the operator's terminal: human-readable output passes through :func:`for_terminal`
(data about to be formatted) or :func:`terminal_text` (one string), which show control
characters escaped instead of passing them through (see :func:`terminal_text`). ``--json`` stays
exact: :func:`print_json` writes the same strings, with the characters a terminal would act on
written as JSON ``\\u`` escapes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from frontdesk.config.loader import load_settings, resolve_path
from frontdesk.config.schema import parse_duration
from frontdesk.daemon.process.registry import Settings
from frontdesk.domain.notices import check_template
from frontdesk.domain.webhooks import WebhookEmitter
from frontdesk.storage.db import Store


class Failure(Exception):
    """A problem to report in one line, exit 1."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n(see `{self.prog} --help`)\n")


def settings_of(args: argparse.Namespace) -> Settings:
    return load_settings(resolve_path(getattr(args, "config", None)), Settings,
                         check_template=check_template)


_BIDI = r"\u202a-\u202e\u2066-\u2069"
"""Bidirectional embeddings, overrides and isolates: they reorder what a person reads."""
_ONE_LINE_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f" + _BIDI + "]")
_MULTI_LINE_UNSAFE = re.compile(r"\r\n|[\x00-\x08\x0b-\x1f\x7f-\x9f" + _BIDI + "]")
_JSON_UNSAFE = re.compile(r"[\x7f-\x9f" + _BIDI + "]")  # json.dumps escapes C0 itself
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\r\n": "\n"}

MULTI_LINE_FIELDS = frozenset({"text", "text_new", "resolution_note", "body"})
"""Keys whose values are bodies: shown on several lines (newline and tab kept). Every other
string is one line of output, its line breaks escaped too."""


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_text(text: str, *, multiline: bool = False) -> str:
    """``text`` safe to print to a terminal: every C0 control (ESC, BEL, backspace, CR...), DEL,
    every C1 control (U+0080-U+009F, CSI U+009B among them) and every bidi embedding, override
    or isolate is shown as its escape (``\\x1b``, ``\\x9b``, ``\\u202e``), so an escape
    sequence shows as harmless text (``\\x1b]8;;http://...``). One-line text (subjects, names,
    addresses, errors) shows line breaks and tabs as ``\\n``, ``\\r``, ``\\t`` too, so it can
    never forge another line of output; ``multiline`` text (a body) keeps its newlines and tabs
    (a CRLF becomes a newline; a lone CR, which would overwrite the line, is escaped)."""
    pattern = _MULTI_LINE_UNSAFE if multiline else _ONE_LINE_UNSAFE
    return pattern.sub(_escaped, text)


def for_terminal(value: Any, *, key: str | None = None) -> Any:
    """A copy of ``value`` (a JSON view: dicts, lists, strings, numbers) to format for a person,
    every string passed through :func:`terminal_text`; the strings under
    :data:`MULTI_LINE_FIELDS` keep their lines. Apply it to the data of every human-readable
    output, just before formatting it; never to ``--json``."""
    if isinstance(value, str):
        return terminal_text(value, multiline=key in MULTI_LINE_FIELDS)
    if isinstance(value, dict):
        return {(terminal_text(k) if isinstance(k, str) else k):
                for_terminal(v, key=k if isinstance(k, str) else None)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(for_terminal(v, key=key) for v in value)
    return value


def print_json(value: Any) -> None:
    """One JSON document on stdout: the exact strings, with DEL, C1 controls and bidi
    characters written as ``\\u`` escapes (json.dumps leaves them raw with ``ensure_ascii=False``;
    they can only occur inside strings, so the document means the same)."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    sys.stdout.write(_JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))
    sys.stdout.write("\n")


async def with_store(settings: Settings, work: Callable[[Store], Awaitable[int]], *,
                     read_only: bool = False) -> int:
    """Run ``work`` on the store. A command that changes things migrates the store first (as
    the daemon does); a ``read_only`` one never creates or migrates it: a missing or older store
    is a one-line error naming it."""
    store = Store.from_settings(settings.database)
    if settings.webhooks:  # a change made here (`frontdesk resolve`) queues its webhooks too
        WebhookEmitter(settings.webhooks).install(store)
    try:
        if read_only:
            await store.require_current()
        else:
            await store.ensure_schema()
        return await work(store)
    finally:
        await store.dispose()


PRIVATE_UMASK = 0o027
"""Added to the caller's umask while a command runs (the systemd unit's ``UMask=0027``)."""


@contextmanager
def private_umask() -> Iterator[None]:
    """While a command (the daemon included) runs, whatever it creates without a mode of its
    own is not readable by others nor writable by the group, whatever the caller's umask; the
    store and attachment files get their modes explicitly anyway (:mod:`frontdesk.storage.modes`).
    The caller's umask is given back afterwards."""
    old = os.umask(PRIVATE_UMASK)
    os.umask(old | PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def who_parser(parser_class: type[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The ``--as NAME`` option of a command that changes something (a parent parser)."""
    who = parser_class(add_help=False)
    who.add_argument("--as", dest="actor", metavar="NAME",
                     help="who does it, for the audit (default: $USER)")
    return who


def actor_of(args: argparse.Namespace) -> str:
    """Who runs the command, for the audit: ``--as``, else ``$USER``, else "staff"."""
    return getattr(args, "actor", None) or os.environ.get("USER") or "staff"


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a usage error, exit 2, otherwise)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text} is less than 1")
    return number


def duration(text: str) -> timedelta:
    """An argparse type: ``"7d"``, ``"24h"``, ``"1h30m"`` (a usage error, exit 2, otherwise)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def local_times(timezone: str) -> Callable[[str | None], str]:
    """Shows the JSON views' UTC times (``2026-11-23T10:00:00.000Z``) to a person in
    ``sla.timezone``: ``2026-11-23 10:00 GMT``."""
    zone = ZoneInfo(timezone)

    def when(value: str | None) -> str:
        if not value:
            return "-"
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return at.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")

    return when
