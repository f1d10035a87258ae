"""What the team learns: ``frontdesk tag``, ``frontdesk similar`` and ``frontdesk saved-reply``.

``tag REF TAG... [--remove]`` changes a conversation's tags (audited); ``similar REF`` lists the
resolved conversations most like it with what solved each (:mod:`frontdesk.domain.similar`);
``saved-reply add|list|remove`` keeps the team's saved replies in the store, beside the config
file's ``[saved_replies]``.
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
from frontdesk.domain.conversations import InvalidAction, get_conversation, set_tags
from frontdesk.domain.saved_replies import (
    SavedReplyError,
    add_saved_reply,
    remove_saved_reply,
    saved_replies,
)
from frontdesk.storage.clock import utcnow


def add_parsers(sub: Any, common: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
                parser_class: type[argparse.ArgumentParser]) -> None:
    who = who_parser(parser_class)
    tag = sub.add_parser("tag", parents=[common, who],
                         help="add tags to a conversation (or --remove them)")
    tag.add_argument("ref", metavar="REF", help="the conversation, FD-12 or 12")
    tag.add_argument("tags", metavar="TAG", nargs="+",
                     help="1-50 lower-case letters, digits, -, _ and :")
    tag.add_argument("--remove", action="store_true", help="take these tags off")
    similar = sub.add_parser("similar", parents=[common, as_json],
                             help="resolved conversations most like this one, with what "
                                  "solved each")
    similar.add_argument("ref", metavar="REF", help="the conversation, FD-12 or 12")
    similar.add_argument("--limit", type=positive_int, default=3, metavar="N",
                         help="at most this many (default: 3)")
    saved = sub.add_parser("saved-reply", parents=[common],
                           help="saved replies kept in the store: add, list, remove")
    actions = saved.add_subparsers(dest="saved_command", required=True,
                                   parser_class=parser_class, metavar="COMMAND")
    add = actions.add_parser("add", parents=[common, who],
                             help="save a reply under a name (replaces one of that name)")
    add.add_argument("name", metavar="NAME", help="letters, digits, - and _")
    add.add_argument("text", metavar="TEXT", nargs="+",
                     help="the reply; {name}, {first_name}, {reference}, {subject} and {agent} "
                          "are filled in when it is sent")
    actions.add_parser("list", parents=[common, as_json],
                       help="the saved replies, from the store and the config file")
    remove = actions.add_parser("remove", parents=[common, who],
                                help="forget a saved reply kept in the store")
    remove.add_argument("name", metavar="NAME", help="the saved reply's name (saved-reply list)")



def cmd_tag(args: argparse.Namespace) -> int:
    settings = settings_of(args)

    async def work(store: Any) -> int:
        async with store.session() as s:
            c = await get_conversation(s, args.ref)
            try:
                changed = await set_tags(
                    s, c, add=() if args.remove else args.tags,
                    remove=args.tags if args.remove else (), actor=actor_of(args), now=utcnow(),
                    data={"via": "cli"})
            except InvalidAction as exc:
                raise Failure(str(exc)) from None
            tags = " ".join(c.tags or []) or "none"
        state = "" if changed else " (unchanged)"
        print(terminal_text(f"{c.reference} tags{state}: {tags}"))
        return 0

    return asyncio.run(with_store(settings, work))


def cmd_similar(args: argparse.Namespace) -> int:
    from frontdesk.domain.similar import SimilarConversations

    settings = settings_of(args)

    async def work(store: Any) -> int:
        async with store.reader() as s:
            c = await get_conversation(s, args.ref)
            hits = await SimilarConversations().similar_to(s, c, limit=args.limit)
        if args.json:
            print_json([h.view() for h in hits])
        elif not hits:
            print(f"no resolved conversation is like {c.reference}")
        else:
            for h in for_terminal([h.view() for h in hits]):
                print(f"{h['reference']:>8}  {h['score']:.2f}  {h['subject'] or '(no subject)'}")
                note = h["resolution_note"]
                print(f"          solved: {' '.join(note.split()) if note else '(no note)'}")
        return 0

    return asyncio.run(with_store(settings, work, read_only=True))


def cmd_saved_reply(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    config = settings.saved_replies

    async def work(store: Any) -> int:
        try:
            if args.saved_command == "list":
                async with store.reader() as s:
                    replies = await saved_replies(s, config)
                if args.json:
                    print_json([r.view() for r in replies])
                elif not replies:
                    print("no saved replies (frontdesk saved-reply add NAME TEXT)")
                for r in for_terminal([r.view() for r in replies]) if not args.json else []:
                    print(f"{r['name']}  ({r['source']})")
                    print("    " + "\n    ".join(r["text"].splitlines() or [""]))
                return 0
            async with store.session() as s:
                if args.saved_command == "add":
                    new = await add_saved_reply(s, args.name, " ".join(args.text),
                                                actor=actor_of(args), now=utcnow())
                    done = "saved" if new else "replaced"
                else:
                    await remove_saved_reply(s, args.name, actor=actor_of(args), now=utcnow(),
                                             config=config)
                    done = "removed"
        except SavedReplyError as exc:
            raise Failure(str(exc)) from None
        print(terminal_text(f"saved reply {args.name.lower()} {done}"))
        return 0

    return asyncio.run(with_store(settings, work, read_only=args.saved_command == "list"))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "tag": cmd_tag, "similar": cmd_similar, "saved-reply": cmd_saved_reply,
}
