"""What the command line's modules share: settings from ``-c``, the store, JSON out, failures.

Exit codes: 0 success, 1 for a :class:`Failure` (or anything else that went wrong), 2 for a usage
error (:class:`Parser` says so and exits).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from frontdesk.config.loader import load_settings, resolve_path
from frontdesk.config.schema import parse_duration
from frontdesk.daemon.process.registry import Settings
from frontdesk.domain.notices import check_template
from frontdesk.storage.db import Store


class Failure(Exception):
    """A problem to report in one line, exit 1."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n(see `{self.prog} --help`)\n")


def settings_of(args: argparse.Namespace) -> Settings:
    return load_settings(resolve_path(getattr(args, "config", None)), Settings,
                         check_template=check_template)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")



async def with_store(settings: Settings, work: Callable[[Store], Awaitable[int]], *,
                     read_only: bool = False) -> int:
    """Run ``work`` on the store. A command that changes things migrates the store first (as
    the daemon does); a ``read_only`` one never creates or migrates it: a missing or older store
    is a one-line error naming it."""
    store = Store.from_settings(settings.database)
    try:
        if read_only:
            await store.require_current()
        else:
            await store.ensure_schema()
        return await work(store)
    finally:
        await store.dispose()


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
