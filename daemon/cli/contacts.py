"""``frontdesk contact show|merge|link|tag|export|erase``: one customer across channels, and
their data, from the command line.

``show`` lists a contact's identities and every conversation on every channel; ``merge A B``
makes B part of A (identities and conversations move, both histories stay, the audit records
who did it); ``link CONTACT ADDRESS`` sends a verification code to an address the customer gave,
which links it when the customer sends the code back in their conversation. ``tag`` sets the
contact tags SLA policies and Slack routes read (``vip``, the language ``lang:de``); ``export``
prints everything stored about the person as one JSON document; ``erase --confirm`` is the GDPR
erasure (:mod:`frontdesk.domain.privacy`): without ``--confirm`` it says what would go and
changes nothing (exit 1).
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
    print_json,
    settings_of,
    terminal_text,
    who_parser,
    with_store,
)
from frontdesk.daemon.cli.outbox import unsendable
from frontdesk.storage.clock import utcnow


def add_parsers(sub: Any, common: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
                parser_class: type[argparse.ArgumentParser]) -> None:
    contact = sub.add_parser("contact", parents=[common],
                             help="a customer's identities and conversations; merge and link")
    actions = contact.add_subparsers(dest="contact_command", required=True,
                                     parser_class=parser_class, metavar="COMMAND")
    show = actions.add_parser("show", parents=[common, as_json],
                              help="a contact's identities and all its conversations")
    show.add_argument("contact", metavar="ID|ADDRESS",
                      help="a contact id, or an address: ada@example.org, +15550001111, "
                           "telegram:12345")
    who = who_parser(parser_class)
    merge = actions.add_parser("merge", parents=[common, as_json, who],
                               help="merge contact B into contact A (both histories kept)")
    merge.add_argument("keep", metavar="A", help="the contact that stays (id or address)")
    merge.add_argument("other", metavar="B", help="the contact merged into A (id or address)")
    link = actions.add_parser("link", parents=[common, who],
                              help="send a code to an address the customer gave; it is linked "
                                   "when they send the code back")
    link.add_argument("contact", metavar="ID|ADDRESS",
                      help="the contact the address joins (id or one of its addresses)")
    link.add_argument("address", metavar="ADDRESS", help="ada@example.org or +15550001111")
    link.add_argument("--ref", metavar="REF",
                      help="the conversation to send the code back in (default: the latest)")
    tag = actions.add_parser("tag", parents=[common, as_json, who],
                             help="add (or --remove) contact tags: vip, lang:de, ...; used by "
                                  "SLA policies and Slack routes")
    tag.add_argument("contact", metavar="ID|ADDRESS", help="a contact id or one of its addresses")
    tag.add_argument("tags", metavar="TAG", nargs="+",
                     help="lower-case letters, digits, '-', '_' and ':'; lang:de names the "
                          "language of automatic messages")
    tag.add_argument("--remove", action="store_true", help="remove these tags instead")
    export = actions.add_parser("export", parents=[common],
                                help="everything stored about a contact as one JSON document")
    export.add_argument("contact", metavar="ID|ADDRESS",
                        help="a contact id or one of its addresses")
    erase = actions.add_parser("erase", parents=[common, who],
                               help="GDPR erasure: identities, names, message texts and "
                                    "attachment files go; conversations stay as anonymous "
                                    "shells for the figures")
    erase.add_argument("contact", metavar="ID|ADDRESS",
                       help="a contact id or one of its addresses")
    erase.add_argument("--confirm", action="store_true",
                       help="really erase (without it nothing changes)")



def cmd_contact(args: argparse.Namespace) -> int:
    from frontdesk.daemon.process.registry import reply_composer
    from frontdesk.domain.contacts import (
        ContactError,
        contact_detail,
        find_contact,
        format_contact,
        merge_contacts,
        request_link,
    )
    from frontdesk.domain.conversations import get_conversation
    from frontdesk.domain.privacy import (
        change_contact,
        contact_tag_list,
        erase_contact,
        export_contact,
        finish_erasure,
        live_contact,
    )
    from frontdesk.storage.attachments import AttachmentStore

    settings = settings_of(args)
    replies = reply_composer(settings)
    known = replies.channels

    async def show(store: Any) -> int:
        async with store.reader() as s:
            detail = await contact_detail(
                s, await live_contact(s, await find_contact(s, args.contact, known=known)))
        if args.json:
            print_json(detail)
        else:
            print(format_contact(for_terminal(detail)), end="")
        return 0

    async def merge(store: Any) -> int:
        async with store.session() as s:
            keep = await live_contact(s, await find_contact(s, args.keep, known=known))
            other = await live_contact(s, await find_contact(s, args.other, known=known))
            result = await merge_contacts(s, keep, other, actor=actor_of(args), now=utcnow())
            detail = await contact_detail(s, keep)
        if args.json:
            print_json(detail)
        else:
            moved = ", ".join(f"{i['channel']}:{i['address']}"
                              for i in for_terminal(result.identities))
            print(f"contact {result.merged_id} merged into contact {result.contact_id}"
                  + (f" ({moved}; {', '.join(result.conversations) or 'no conversations'})"
                     if moved or result.conversations else ""))
        return 0

    async def link(store: Any) -> int:
        async with store.session() as s:
            contact = await live_contact(s, await find_contact(s, args.contact, known=known))
            conversation = await get_conversation(s, args.ref) if args.ref else None
            if conversation is not None and conversation.contact_id != contact.id:
                raise ContactError(f"{conversation.reference} is not contact {contact.id}'s")
            made = await request_link(s, contact, args.address,
                                      replies=replies, now=utcnow(),
                                      requested_by=actor_of(args), conversation=conversation,
                                      unavailable=unsendable(settings))
        where = f" in FD-{made.conversation_id}" if made.conversation_id else ""
        print(f"a code is on its way to {terminal_text(made.address)}; it links the address "
              f"to contact {made.contact_id} when the customer sends it back{where} within 24 "
              "hours")
        return 0

    async def tag(store: Any) -> int:
        async with store.session() as s:
            contact = await live_contact(s, await find_contact(s, args.contact, known=known))
            changes = {"remove": args.tags} if args.remove else {"add": args.tags}
            await change_contact(s, contact, actor=actor_of(args), now=utcnow(), **changes)
            tags = contact_tag_list(contact)
            contact_id = contact.id
        if args.json:
            print_json({"id": contact_id, "tags": tags})
        else:
            print(f"contact {contact_id}: {' '.join(tags) if tags else '(no tags)'}")
        return 0

    async def export(store: Any) -> int:
        async with store.reader() as s:
            document = await export_contact(s, await find_contact(s, args.contact, known=known))
        print_json(document)
        return 0

    async def erase(store: Any) -> int:
        if not args.confirm:
            async with store.reader() as s:
                contact = await live_contact(
                    s, await find_contact(s, args.contact, known=known))
                found = await export_contact(s, contact)
            messages = sum(len(c["messages"]) for c in found["conversations"])
            raise Failure(
                f"this erases contact {contact.id} for good: {len(found['identities'])} "
                f"identities, its name, the texts of {messages} messages in "
                f"{len(found['conversations'])} conversations and their attachment files; "
                "nothing was changed: run it again with --confirm")
        async with store.session() as s:
            contact = await find_contact(s, args.contact, known=known)
            report = await erase_contact(s, contact, actor=actor_of(args), now=utcnow())
        report = await finish_erasure(store, AttachmentStore(settings.daemon.data_dir), report)
        counts = report.counts
        print(f"contact {report.contact_id} erased: {counts['identities']} identities, "
              f"{counts['messages']} messages in {counts['conversations']} conversations, "
              f"{counts['attachments']} attachments ({report.files_deleted} files deleted); "
              "the conversations stay as anonymous shells")
        for note in report.notes:
            print(f"frontdesk: {terminal_text(note)}", file=sys.stderr)
        return 0

    work = {"show": show, "merge": merge, "link": link, "tag": tag, "export": export,
            "erase": erase}[args.contact_command]

    async def guarded(store: Any) -> int:
        try:
            return await work(store)
        except ContactError as exc:
            raise Failure(str(exc)) from None

    return asyncio.run(with_store(settings, guarded,
                                  read_only=args.contact_command in ("show", "export")))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"contact": cmd_contact}
