"""Reply-all on the command line: ``frontdesk cc REF [+ADDR|-ADDR]...``.

Without changes it shows who a conversation's staff replies copy (its CC list,
:mod:`frontdesk.domain.cc`); ``+carol@example.org`` adds an address, ``-bob@example.org`` removes
one for good (later mail that still copies bob does not add him back; ``+bob@example.org`` does).
Changes are audited (``cc_changed``) like the Slack desk's ``/frontdesk cc``.

An address to remove starts with ``-``, which argparse would take for an option (``-carol@...``
even for ``-c arol@...``): everything after REF is read here, the changes by their shape and the
rest (``-c FILE``, ``--as NAME``, ``--json``) by a small parser of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Callable
from typing import Any

from frontdesk.daemon.cli.common import (
    Failure,
    Parser,
    actor_of,
    print_json,
    settings_of,
    terminal_text,
    who_parser,
    with_store,
)
from frontdesk.storage.clock import utcnow

_CHANGE = re.compile(r"[+-]?[^+\-\s][^\s]*@[^\s]*")
"""A change: ``+ADDR``, ``-ADDR`` or a bare ``ADDR`` (an add); anything else is an option."""


def add_parsers(sub: Any, common: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
                parser_class: type[argparse.ArgumentParser]) -> None:
    who = who_parser(parser_class)
    cc = sub.add_parser("cc", parents=[common, as_json, who],
                        help="who a conversation's staff replies copy (reply-all): show it, "
                             "+ADDR adds, -ADDR removes")
    cc.add_argument("ref", metavar="REF", help="the conversation, FD-12 or 12")
    cc.add_argument("changes", metavar="+ADDR|-ADDR", nargs=argparse.REMAINDER,
                    help="+carol@example.org copies carol on the next replies; "
                         "-bob@example.org stops copying bob, also when the customer's later "
                         "mail copies him again; none: show the list")


def _options() -> argparse.ArgumentParser:
    """The options that may follow REF among the changes."""
    tail = Parser(prog="frontdesk cc", add_help=False)
    tail.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="FILE")
    tail.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    tail.add_argument("--as", dest="actor", metavar="NAME", default=argparse.SUPPRESS)
    return tail


def _split(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(addresses to add, addresses to remove); the options among them go into ``args``."""
    changes = [w for w in args.changes if _CHANGE.fullmatch(w)]
    _options().parse_args([w for w in args.changes if not _CHANGE.fullmatch(w)],
                          namespace=args)
    add = [w.removeprefix("+") for w in changes if not w.startswith("-")]
    remove = [w[1:] for w in changes if w.startswith("-")]
    return add, remove


def cmd_cc(args: argparse.Namespace) -> int:
    from frontdesk.domain import cc as cc_list
    from frontdesk.domain.conversations import get_conversation

    add, remove = _split(args)
    settings = settings_of(args)
    actor = actor_of(args)

    async def work(store: Any) -> int:
        added: list[str] = []
        taken: list[str] = []
        if add or remove:
            async with store.session() as s:
                conversation = await get_conversation(s, args.ref)
                try:
                    added, taken = await cc_list.change_cc(
                        s, conversation, add=add, remove=remove, actor=actor, now=utcnow(),
                        data={"via": "cli"})
                except cc_list.CcError as exc:
                    raise Failure(str(exc)) from None
                reference, now = conversation.reference, cc_list.active(conversation.cc)
        else:
            async with store.reader() as s:
                conversation = await get_conversation(s, args.ref)
                reference, now = conversation.reference, cc_list.active(conversation.cc)
        if getattr(args, "json", False):
            print_json({"reference": reference, "cc": now, "added": added, "removed": taken})
            return 0
        listed = ", ".join(now) or "nobody"
        if add or remove:
            done = ([f"added {', '.join(added)}"] if added else []) + (
                [f"removed {', '.join(taken)}"] if taken else [])
            said = f"{reference}: CC {'; '.join(done)}" if done else f"{reference} unchanged"
            print(terminal_text(f"{said} (now {listed})"))
        else:
            print(terminal_text(f"{reference} CC: {listed}"))
        return 0

    return asyncio.run(with_store(settings, work, read_only=not (add or remove)))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"cc": cmd_cc}
