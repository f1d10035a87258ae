"""``frontdesk outbox [--failed] [--json]``, ``outbox retry ID|--all``, ``outbox cancel ID``.

The outbound work waiting in the store, made visible and manageable from the shell: what is
queued (replies, acknowledgements, verification codes, Slack posts, attachment fetches, outgoing
webhooks: kind ``webhook``, channel ``webhook:<receiver>``) with its attempts, next attempt and
the reason of its last failure, and what failed for good. ``retry``
makes rows due now (a failed one is queued again with its attempts reset); ``cancel`` gives one up
("cancelled by NAME", shown on the message and written to the audit). A running daemon picks a
retried row up at its next look at the outbox (``daemon.outbox_poll``; on PostgreSQL at once,
woken by NOTIFY). The listing only reads: it never creates, migrates or changes the store.

:func:`unsendable` tells other commands which customer channels cannot send here (``frontdesk
contact link`` refuses a code that could never go).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from frontdesk.daemon.cli.common import (
    Failure,
    actor_of,
    for_terminal,
    local_times,
    positive_int,
    print_json,
    settings_of,
    who_parser,
    with_store,
)
from frontdesk.daemon.process.registry import Settings
from frontdesk.domain.conversations import iso
from frontdesk.storage.clock import utcnow


def add_parsers(sub: Any, common: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
                parser_class: type[argparse.ArgumentParser]) -> None:
    outbox = sub.add_parser("outbox", parents=[common, as_json],
                            help="queued and failed outbound work, with the reason of the last "
                                 "failure; retry or cancel it")
    outbox.add_argument("--failed", action="store_true", help="only what failed for good")
    outbox.add_argument("--limit", type=positive_int, default=100, metavar="N",
                        help="the newest N rows (default 100)")
    actions = outbox.add_subparsers(dest="outbox_command", parser_class=parser_class,
                                    metavar="retry|cancel")
    who = who_parser(parser_class)
    retry = actions.add_parser("retry", parents=[common, who],
                               help="send now, clearing the backoff (a failed row is queued "
                                    "again)")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", type=positive_int, metavar="ID", help="the outbox row")
    which.add_argument("--all", action="store_true",
                       help="every queued row, and every failed one not cancelled")
    cancel = actions.add_parser("cancel", parents=[common, who],
                                help='give up on one: it ends failed, "cancelled by NAME"')
    cancel.add_argument("id", type=positive_int, metavar="ID", help="the outbox row")



def unsendable(settings: Settings) -> dict[str, str]:
    """The customer channels this installation knows that cannot send here (not configured, or
    their SDK missing), each with the reason in words, e.g. ``{"sms": "the sms channel is not
    configured here (twilio.account_sid and twilio.auth_token are not set)"}``."""
    from frontdesk.daemon.process.registry import channel_sections

    why: dict[str, str] = {}
    for section in channel_sections(settings).values():
        built = section.build(settings)
        running = {name for b in built if not isinstance(b, str) for name in b.channel_names}
        reasons = "; ".join(b.split(" disabled: ", 1)[-1] for b in built if isinstance(b, str))
        for name in section.channel_names:
            if name not in running:
                why[name] = (f"the {name} channel is not configured here"
                             + (f" ({reasons})" if reasons else ""))
    return why


def cmd_outbox(args: argparse.Namespace) -> int:
    from frontdesk.daemon.process.outbox import (
        OutboxError,
        cancel_row,
        outbox_items,
        retry_rows,
    )

    settings = settings_of(args)

    async def listing(store: Any) -> int:
        now = utcnow()
        async with store.reader() as s:
            items, total = await outbox_items(s, failed_only=args.failed, limit=args.limit,
                                              now=now)
        if args.json:
            print_json(items)
        elif not items:
            print("nothing has failed" if args.failed else "nothing is queued or failed")
        else:
            when = local_times(settings.sla.timezone)
            for item in for_terminal(items):
                print(_line(item, iso(now) or "", when))
        if total > len(items):
            print(f"(the newest {len(items)} of {total}; --limit N shows more)",
                  file=sys.stderr)
        return 0

    async def retry(store: Any) -> int:
        done = await retry_rows(store, None if args.all else args.id, actor=actor_of(args),
                                now=utcnow())
        if not args.all:
            if done.busy:
                print(f"outbox #{args.id} is being sent right now; nothing to do")
            elif done.requeued:
                print(f"outbox #{args.id} failed before; queued again to go now, attempts reset")
            else:
                print(f"outbox #{args.id} is due now; the daemon sends it at its next look")
            return 0
        parts = []
        if done.due:
            parts.append(f"{len(done.due)} queued row(s) due now")
        if done.requeued:
            parts.append(f"{len(done.requeued)} failed row(s) queued again, attempts reset")
        if done.busy:
            parts.append(f"{len(done.busy)} being sent right now, left as they are")
        print("; ".join(parts) if parts else "nothing is queued or failed")
        return 0

    async def cancel(store: Any) -> int:
        item = for_terminal(await cancel_row(store, args.id, actor=actor_of(args), now=utcnow()))
        where = f" on {item['conversation']}" if item["conversation"] else ""
        print(f"outbox #{item['id']} ({item['kind']} {item['channel']} to "
              f"{item['target'] or '-'}{where}) cancelled: it will not be sent")
        return 0

    work = {None: listing, "retry": retry, "cancel": cancel}[args.outbox_command]

    async def guarded(store: Any) -> int:
        try:
            return await work(store)
        except OutboxError as exc:
            raise Failure(str(exc)) from None

    return asyncio.run(with_store(settings, guarded, read_only=args.outbox_command is None))


def _line(item: dict[str, Any], now: str, when: Callable[[str | None], str]) -> str:
    """One row of the listing (``now`` and its times as the JSON view's ISO strings; ``when``
    shows a time to a person), and its last failure's reason on a second line."""
    state = ""
    if item["state"] == "pending":
        if item["sending_by"]:
            state = f"being sent by {item['sending_by']}"
        elif item["next_attempt_at"] and item["next_attempt_at"] > now:
            state = f"next try {when(item['next_attempt_at'])}"
        else:
            state = "due now"
    elif item["failed_at"]:
        state = f"failed {when(item['failed_at'])}"
    line = (f"#{item['id']:<6} {item['state']:8} {item['kind']:12} {item['channel']:9} "
            f"{item['conversation'] or '-':>8}  {item['target'] or '-'}  "
            f"attempts {item['attempts']}, {state}")
    if item["last_error"]:
        line += f"\n        {item['last_error']}"
    return line


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"outbox": cmd_outbox}
