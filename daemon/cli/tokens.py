"""``frontdesk token create|list|revoke``: the REST API's tokens.

``create`` prints the token once (only its hash is stored); ``list`` shows the tokens not revoked
with when each was last used; ``revoke`` ends one at once (its requests answer 401 from then on,
on every instance). Each is written to the events audit with who ran it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from frontdesk.daemon.api.tokens import TokenError, create_token, list_tokens, revoke_token
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
from frontdesk.storage.clock import utcnow


def add_parsers(sub: Any, common: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
                parser_class: type[argparse.ArgumentParser]) -> None:
    token = sub.add_parser("token", parents=[common],
                           help="REST API tokens: create (printed once), list, revoke")
    actions = token.add_subparsers(dest="token_command", required=True,
                                   parser_class=parser_class, metavar="COMMAND")
    who = who_parser(parser_class)
    create = actions.add_parser("create", parents=[common, as_json, who],
                                help="a new token, printed once")
    create.add_argument("name", metavar="NAME", help="what uses it, like shop or n8n")
    create.add_argument("--scope", choices=("read", "write"), default="read",
                        help="read: GET only; write: replies, notes, actions, contacts too "
                             "(default: read)")
    actions.add_parser("list", parents=[common, as_json], help="the tokens not revoked")
    revoke = actions.add_parser("revoke", parents=[common, who],
                                help="end a token at once")
    revoke.add_argument("name", metavar="NAME", help="the token's name (frontdesk token list)")



def cmd_token(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    command = {"create": _create, "list": _list, "revoke": _revoke}[args.token_command]

    async def work(store: Any) -> int:
        try:
            return await command(store, args)
        except TokenError as exc:
            raise Failure(str(exc)) from None

    return asyncio.run(with_store(settings, work, read_only=args.token_command == "list"))


async def _create(store: Any, args: argparse.Namespace) -> int:
    async with store.session() as s:
        token = await create_token(s, args.name, args.scope, actor=actor_of(args), now=utcnow())
    if args.json:
        print_json({"name": args.name, "scope": args.scope, "token": token})
    else:
        print(token)
        print(f"token {terminal_text(args.name)} ({args.scope}): shown this once; keep it "
              "where its user reads secrets", file=sys.stderr)
    return 0


async def _list(store: Any, args: argparse.Namespace) -> int:
    async with store.reader() as s:
        tokens = await list_tokens(s)
    if args.json:
        print_json(tokens)
    elif not tokens:
        print("no tokens (frontdesk token create NAME)")
    else:
        for t in for_terminal(tokens):
            print(f"{t['name']:24} {t['scope']:6} created {t['created_at']}  "
                  f"last used {t['last_used_at'] or 'never'}")
    return 0


async def _revoke(store: Any, args: argparse.Namespace) -> int:
    async with store.session() as s:
        await revoke_token(s, args.name, actor=actor_of(args), now=utcnow())
    print(f"token {terminal_text(args.name)} revoked")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"token": cmd_token}
