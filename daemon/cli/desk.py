"""Staff actions and search on the command line: ``frontdesk search|resolve|reopen|assign|snooze``.

The same functions as the Slack desk's buttons and slash command (:mod:`.conversations`,
:mod:`.search`), each written to the events audit with the person who ran it. A running daemon
with the Slack desk refreshes the conversation's root message from that audit.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

from frontdesk.daemon.cli.common import (
    Failure,
    actor_of,
    for_terminal,
    positive_int,
    print_json,
    settings_of,
    terminal_text,
    who_parser,
    with_store,
)
from frontdesk.domain.business_hours import calendar_from_settings
from frontdesk.storage.clock import utcnow


def add_parsers(sub: Any, common: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
                parser_class: type[argparse.ArgumentParser]) -> None:
    who = who_parser(parser_class)
    search = sub.add_parser("search", parents=[common, as_json],
                            help="find conversations by the words in their messages")
    search.add_argument("text", metavar="TEXT", nargs="+",
                        help='words (as prefixes), "a phrase", OR between two terms')
    search.add_argument("--limit", type=positive_int, default=20, metavar="N")
    for name, help_text in (("resolve", "mark a conversation resolved"),
                            ("reopen", "open a conversation again")):
        p = sub.add_parser(name, parents=[common, who], help=help_text)
        p.add_argument("ref", metavar="REF", help="the conversation, FD-12 or 12")
        if name == "resolve":
            p.add_argument("--note", metavar="TEXT",
                           help="what solved it, kept as the conversation's resolution note "
                                "(shown with it in similar conversations)")
    assign = sub.add_parser("assign", parents=[common, who],
                            help="give a conversation to someone (\"-\" for nobody)")
    assign.add_argument("ref", metavar="REF", help="the conversation, FD-12 or 12")
    assign.add_argument("assignee", metavar="NAME", help="who takes it; - for nobody")
    snooze = sub.add_parser("snooze", parents=[common, who],
                            help='put a conversation aside ("2h", "1d" or "morning")')
    snooze.add_argument("ref", metavar="REF", help="the conversation, FD-12 or 12")
    snooze.add_argument("until", metavar="DURATION",
                        help='how long, like "2h" or "1d12h", or "morning" (next opening)')


def cmd_search(args: argparse.Namespace) -> int:
    from frontdesk.domain.search import InvalidQuery, marked, search_conversations

    settings = settings_of(args)
    query = " ".join(args.text)

    async def work(store: Any) -> int:
        async with store.reader() as s:
            try:
                hits = await search_conversations(s, query, limit=args.limit)
            except InvalidQuery as exc:
                raise Failure(str(exc)) from None
        if args.json:
            print_json([h.view() for h in hits])
        elif not hits:
            print(f"no conversation mentions {terminal_text(repr(query))}")
        else:
            for h in hits:
                shown = for_terminal({"name": h.contact_name, "subject": h.subject,
                                      "snippet": marked(h.snippet, "[", "]")})
                print(f"{h.reference:>8}  {h.status:8} {h.channel:8} "
                      f"{h.created_at:%Y-%m-%d}  {shown['name'] or '-'}  {shown['subject']}")
                print(f"          {shown['snippet']}")
        return 0

    return asyncio.run(with_store(settings, work, read_only=True))


def _action(describe: Callable[[Any, argparse.Namespace], str],
            apply: Callable[..., Any]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from frontdesk.domain.conversations import InvalidAction, get_conversation

        settings = settings_of(args)
        actor = actor_of(args)

        async def work(store: Any) -> int:
            async with store.session() as s:
                conversation = await get_conversation(s, args.ref)
                try:
                    changed = await apply(s, conversation, args, actor=actor, now=utcnow(),
                                          calendar=calendar_from_settings(settings.sla))
                except InvalidAction as exc:
                    raise Failure(str(exc)) from None
            print(terminal_text(describe(conversation, args)) if changed else
                  f"{conversation.reference} unchanged (already {conversation.status})")
            return 0

        return asyncio.run(with_store(settings, work))

    return command


async def _resolve(s: Any, c: Any, args: argparse.Namespace, **kw: Any) -> bool:
    from frontdesk.domain.conversations import resolve

    return await resolve(s, c, actor=kw["actor"], now=kw["now"], data={"via": "cli"},
                         note=args.note)


async def _reopen(s: Any, c: Any, args: argparse.Namespace, **kw: Any) -> bool:
    from frontdesk.domain.conversations import reopen

    return await reopen(s, c, actor=kw["actor"], now=kw["now"], data={"via": "cli"})


async def _assign(s: Any, c: Any, args: argparse.Namespace, **kw: Any) -> bool:
    from frontdesk.domain.conversations import assign

    who = None if args.assignee.strip() in ("", "-") else args.assignee
    return await assign(s, c, who, actor=kw["actor"], now=kw["now"], data={"via": "cli"})


async def _snooze(s: Any, c: Any, args: argparse.Namespace, **kw: Any) -> bool:
    from frontdesk.domain.conversations import snooze, snooze_until

    until = snooze_until(args.until, kw["now"], kw["calendar"])
    return await snooze(s, c, until, actor=kw["actor"], now=kw["now"], data={"via": "cli"})


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "search": cmd_search,
    "resolve": _action(lambda c, a: f"{c.reference} resolved"
                       + (" (resolution note kept)" if a.note else ""), _resolve),
    "reopen": _action(lambda c, a: f"{c.reference} reopened", _reopen),
    "assign": _action(lambda c, a: f"{c.reference} assigned to {c.assignee}" if c.assignee
                      else f"{c.reference} unassigned", _assign),
    "snooze": _action(lambda c, a: f"{c.reference} snoozed until "
                      f"{c.snoozed_until:%Y-%m-%d %H:%M} UTC", _snooze),
}
