"""``frontdesk oauth login|status|logout|key``: OAuth 2.0 sign-ins for the mailbox and the relay.

``login`` runs the authorization once (the device flow where the provider has one for these
scopes, else the browser with a redirect to ``http://127.0.0.1:PORT/``) and stores the refresh
token encrypted with the key in ``$FRONTDESK_OAUTH_KEY``; a running daemon picks it up by itself.
``status`` lists the signed-in accounts and the ones the config signs in as (never a token);
``logout`` forgets one; ``key`` prints a new key for ``FRONTDESK_OAUTH_KEY``. ``login`` and
``logout`` are written to the events audit with who ran them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from frontdesk.channels.email.oauth import (
    PROVIDERS,
    DevicePrompt,
    LoginFailed,
    SignInRefused,
    SignIns,
    TokenCipher,
    account_key,
    browser_login,
    device_login,
    missing_scopes,
    new_key,
    provider_for,
    store_login,
)
from frontdesk.daemon.cli.common import (
    Failure,
    actor_of,
    for_terminal,
    local_times,
    print_json,
    settings_of,
    terminal_text,
    who_parser,
    with_store,
)
from frontdesk.daemon.process.registry import Settings


def add_parsers(sub: Any, common: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
                parser_class: type[argparse.ArgumentParser]) -> None:
    oauth = sub.add_parser("oauth", parents=[common],
                           help="OAuth 2.0 sign-ins of the IMAP mailbox and the relay "
                                "(Google, Microsoft 365)")
    actions = oauth.add_subparsers(dest="oauth_command", required=True,
                                   parser_class=parser_class, metavar="COMMAND")
    who = who_parser(parser_class)
    login = actions.add_parser("login", parents=[common, who],
                               help="sign an account in once and store its refresh token, "
                                    "encrypted")
    login.add_argument("provider", choices=PROVIDERS, metavar="PROVIDER",
                       help="google, microsoft or generic (the endpoints in [email.oauth])")
    login.add_argument("--account", required=True, metavar="ADDRESS",
                       help="the mailbox address to sign in as (email.imap.username, "
                            "email.outbound.username)")
    login.add_argument("--flow", choices=("auto", "device", "browser"), default="auto",
                       help="device: enter a code on any device (Microsoft); browser: a "
                            "redirect to this machine (Google); auto (default): device where "
                            "the provider has it")
    login.add_argument("--port", type=_port, default=0, metavar="PORT",
                       help="browser flow: listen for the redirect on 127.0.0.1:PORT (default: "
                            "any free port; fix one to forward it with ssh -L)")
    actions.add_parser("status", parents=[common, as_json],
                       help="the signed-in accounts and the ones the config signs in as")
    logout = actions.add_parser("logout", parents=[common, who],
                                help="forget an account's stored sign-in")
    logout.add_argument("--account", required=True, metavar="ADDRESS",
                        help="the account (frontdesk oauth status)")
    actions.add_parser("key", parents=[common],
                       help="print a new key for FRONTDESK_OAUTH_KEY")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def cmd_oauth(args: argparse.Namespace) -> int:
    command = {"login": _login, "status": _status, "logout": _logout,
               "key": _key}[args.oauth_command]
    return command(args)


def _key(args: argparse.Namespace) -> int:
    print(new_key())
    print("give it to frontdesk as FRONTDESK_OAUTH_KEY (in the service's environment file), "
          "and keep a copy: without it the stored sign-ins cannot be read", file=sys.stderr)
    return 0


def _login(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    config = settings.email.oauth
    if config.provider and config.provider != args.provider:
        raise Failure(f"email.oauth.provider is {config.provider!r}, not {args.provider!r}: "
                      "the app registration in the config is for the other one")
    if not config.client_id:
        raise Failure("email.oauth.client_id is not set: register an app with the provider "
                      "first (README: \"Google and Microsoft 365 sign-in\")")
    provider = provider_for(config, args.provider)
    if not provider.token_endpoint:
        raise Failure("email.oauth.token_endpoint is not set (generic has no preset)")
    if not provider.scopes:
        raise Failure("email.oauth.scopes is not set (generic has no preset)")
    try:
        cipher = TokenCipher.from_environment(config.key_env)
    except SignInRefused as exc:
        raise Failure(str(exc)) from None
    account = args.account.strip()
    if not account:
        raise Failure("--account is empty")
    flow = args.flow
    if flow == "auto":
        flow = "device" if provider.device_authorization_endpoint else "browser"
    if flow == "device" and not provider.device_authorization_endpoint:
        raise Failure(f"{provider.name} has no device flow for these scopes (set "
                      "email.oauth.device_authorization_endpoint, or use --flow browser)")

    async def work(store: Any) -> int:
        if flow == "device":
            token = await device_login(config, provider, show=_show_code)
        else:
            token = await browser_login(config, provider, account=account, port=args.port,
                                        show=_show_address)
        for scope in missing_scopes(token, provider):
            print(f"warning: the sign-in was not granted {scope}; frontdesk may be refused "
                  "(sign in again and allow it)", file=sys.stderr)
        await store_login(store, cipher, account=account, provider=provider, token=token,
                          actor=actor_of(args))
        print(f"signed in: {terminal_text(account_key(account))} ({provider.name}); the "
              "refresh token is stored encrypted, and a running daemon uses it from now on")
        return 0

    try:
        return asyncio.run(with_store(settings, work))
    except LoginFailed as exc:
        raise Failure(str(exc)) from None


def _show_code(prompt: DevicePrompt) -> None:
    minutes = max(1, prompt.expires_in // 60)
    print(f"To sign in, open {terminal_text(prompt.verification_uri)} on any device and enter "
          f"the code {terminal_text(prompt.user_code)} (within {minutes} minutes).")
    if prompt.verification_uri_complete:
        print(f"(or open {terminal_text(prompt.verification_uri_complete)})")
    print("Waiting for the sign-in to be approved...", flush=True)


def _show_address(url: str, port: int) -> None:
    print("To sign in, open this address in a browser on this machine:")
    print(f"  {terminal_text(url)}")
    print(f"The browser comes back to http://127.0.0.1:{port}/; from another machine, forward "
          f"the port first: ssh -L {port}:127.0.0.1:{port} THIS-HOST "
          "(and give --port to keep it fixed).")
    print("Waiting for the browser...", flush=True)


def _uses(settings: Settings) -> dict[str, list[str]]:
    """The accounts the config signs in as with OAuth 2.0, and for what."""
    email = settings.email
    uses: dict[str, list[str]] = {}
    if email.imap.auth == "oauth2" and email.imap.username:
        uses.setdefault(account_key(email.imap.username), []).append("imap")
    if email.outbound.auth == "oauth2" and email.outbound.username:
        uses.setdefault(account_key(email.outbound.username), []).append("outbound")
    return uses


def _status(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    uses = _uses(settings)

    async def work(store: Any) -> int:
        rows = await SignIns(store).listing()
        signed = {r["account"] for r in rows}
        views = [{**r, "signed_in": True, "used_by": uses.get(r["account"], [])} for r in rows]
        views += [{"account": a, "provider": settings.email.oauth.provider or None,
                   "scope": None, "created_at": None, "updated_at": None,
                   "refreshed_at": None, "last_error": None, "signed_in": False,
                   "used_by": used} for a, used in sorted(uses.items()) if a not in signed]
        if args.json:
            print_json(views)
            return 0
        if not views:
            print("no OAuth 2.0 sign-ins (frontdesk oauth login PROVIDER --account ADDRESS)")
            return 0
        when = local_times(settings.sla.timezone)
        for v in for_terminal(views):
            used = f"  used by {', '.join(v['used_by'])}" if v["used_by"] else "  (not in use)"
            if not v["signed_in"]:
                print(f"{v['account']}  NOT SIGNED IN{used}: frontdesk oauth login "
                      f"{v['provider'] or 'PROVIDER'} --account {v['account']}")
                continue
            print(f"{v['account']}  {v['provider']}  signed in {when(v['created_at'])}, "
                  f"renewed {when(v['refreshed_at'])}{used}")
            if v["last_error"]:
                print(f"  last error: {v['last_error']}")
        return 0

    return asyncio.run(with_store(settings, work, read_only=True))


def _logout(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    account = account_key(args.account)

    async def work(store: Any) -> int:
        if not await SignIns(store).remove(account, actor=actor_of(args)):
            raise Failure(f"{account} is not signed in (frontdesk oauth status)")
        print(f"signed out: {terminal_text(account)}; its refresh token is deleted from the "
              "store (to revoke the consent itself, remove frontdesk's access in the "
              "account's security settings)")
        if account in _uses(settings):
            print(f"warning: the config still signs in as {terminal_text(account)}; a running "
                  "daemon stops being able to renew its sign-in", file=sys.stderr)
        return 0

    return asyncio.run(with_store(settings, work))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"oauth": cmd_oauth}
