"""What the command line's modules share: settings from ``-c``, the store, JSON out, failures.

Exit codes: 0 success, 1 for a :class:`Failure` (or anything else that went wrong), 2 for a usage
error (:class:`Parser` says so and exits).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from frontdesk.config.loader import load_settings, resolve_path
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



async def with_store(settings: Settings, work: Callable[[Store], Awaitable[int]]) -> int:
    store = Store.from_settings(settings.database)
    try:
        await store.ensure_schema()
        return await work(store)
    finally:
        await store.dispose()
