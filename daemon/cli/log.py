"""``frontdesk log phone|in-person|letter``: log a contact taken by phone, in person or by letter.

The contact is journaled straight into the store (the command line has no daemon API), then the
command waits a bounded time (``--wait``) for a running daemon to make it a conversation and
prints its reference. Without a daemon it says the contact is journaled and becomes a conversation
when the daemon runs. The same ``--external-id`` again is stored once (default: a fresh id).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from frontdesk.daemon.cli.common import Failure, print_json, settings_of, terminal_text, with_store

CHANNELS = {"phone": "phone", "in-person": "in_person", "in_person": "in_person",
            "letter": "letter"}
_FLAGS = {"name": "--name", "email": "--email", "phone": "--phone", "subject": "--subject",
          "text": "TEXT", "author": "--as", "external_id": "--external-id", "channel": "CHANNEL"}


def add_parsers(sub: Any, common: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
                parser_class: type[argparse.ArgumentParser]) -> None:
    log = sub.add_parser("log", parents=[common, as_json],
                         help="log a contact taken by phone, in person or by letter as a "
                              "conversation")
    log.add_argument("channel", metavar="phone|in-person|letter",
                     choices=["phone", "in-person", "in_person", "letter"],
                     help="how the customer got in touch")
    log.add_argument("text", metavar="TEXT", help="what the customer said or wrote")
    log.add_argument("--name", default="", help="the customer's name")
    log.add_argument("--email", default=None,
                     help="their email address: the acknowledgement and replies go there")
    log.add_argument("--phone", default=None,
                     help="their phone number with its country code (+442079460958): replies "
                          "go there by SMS when there is no email address")
    log.add_argument("--subject", default="", help="what it is about (default: the first words)")
    log.add_argument("--as", dest="author", metavar="NAME",
                     help="who took the contact (default: $USER)")
    log.add_argument("--external-id", metavar="ID",
                     help="your id of this contact; the same id again is stored once "
                          "(default: a fresh one)")
    log.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                     help="how long to wait for the daemon to make it a conversation "
                          "(default: 10)")


def cmd_log(args: argparse.Namespace) -> int:
    from frontdesk.channels.logged.contact import LoggedContact, problems
    from frontdesk.channels.logged.intake import (
        IntakeError,
        conversation_of,
        logged_row,
        write_row,
    )

    try:
        item = LoggedContact.model_validate({
            "channel": CHANNELS[args.channel],
            "external_id": args.external_id if args.external_id is not None
            else f"cli-{secrets.token_hex(8)}",
            "contact": {"name": args.name, "email": args.email, "phone": args.phone},
            "subject": args.subject, "text": args.text,
            "author": args.author or os.environ.get("USER") or "staff"})
    except ValidationError as exc:
        raise Failure("; ".join(f"{_FLAGS.get(field, field)}: {why}"
                                for field, why in problems(exc).items())) from None
    settings = settings_of(args)

    async def work(store: Any) -> int:
        created = await write_row(store, item)
        found = await logged_row(store, item.external_id)
        assert found is not None  # just written, or there before
        try:
            reference = await conversation_of(store, *found, timeout=max(0.0, args.wait))
        except IntakeError as exc:
            raise Failure(f"journaled, but {exc}") from None
        _report(args, item.external_id, reference, created)
        return 0

    return asyncio.run(with_store(settings, work))


def _report(args: argparse.Namespace, external_id: str, reference: str | None,
            created: bool) -> None:
    if args.json:
        print_json({"reference": reference, "created": created, "external_id": external_id})
        return
    shown = terminal_text(external_id)
    if reference is None:
        print(f"journaled (external id {shown}); it becomes a conversation when the frontdesk "
              "daemon runs (none processed it within "
              f"{args.wait:g}s)" if created else
              f"already journaled (external id {shown}) and not yet a conversation; it becomes "
              "one when the frontdesk daemon runs")
    elif created:
        print(f"logged as {reference} (external id {shown})")
    else:
        print(f"already logged as {reference} (external id {shown})")


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"log": cmd_log}
