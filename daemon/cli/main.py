"""The ``frontdesk`` command line.

Exit codes: 0 success, 1 for anything that went wrong (bad config, unknown reference, store
unreachable), 2 for a usage error. Problems are one short line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from sqlalchemy import select

from frontdesk import __version__
from frontdesk.config.loader import ConfigError, load_settings, resolve_path
from frontdesk.daemon.cli import cc as cli_cc
from frontdesk.daemon.cli import contacts as cli_contacts
from frontdesk.daemon.cli import desk as cli_desk
from frontdesk.daemon.cli import knowledge as cli_knowledge
from frontdesk.daemon.cli import log as cli_log
from frontdesk.daemon.cli import oauth as cli_oauth
from frontdesk.daemon.cli import outbox as cli_outbox
from frontdesk.daemon.cli import tokens as cli_tokens
from frontdesk.daemon.cli.common import (
    Failure,
    Parser,
    duration,
    for_terminal,
    local_times,
    positive_int,
    print_json,
    private_umask,
    settings_of,
    terminal_text,
    with_store,
)
from frontdesk.daemon.process.registry import Settings
from frontdesk.domain.business_hours import calendar_from_settings
from frontdesk.domain.notices import check_template
from frontdesk.storage.clock import utcnow

log = logging.getLogger("frontdesk")


def _parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="FILE",
                        help="config file (default: $FRONTDESK_CONFIG, then ./frontdesk.toml)")
    as_json = Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="machine-readable output")

    p = Parser(prog="frontdesk", description="Omnichannel support inbox daemon.",
                parents=[common])
    p.add_argument("--version", action="version", version=f"frontdesk {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    init = sub.add_parser("init", parents=[common],
                          help="write a starter config (never overwrites) and migrate the store")
    init.add_argument("--state-dir", metavar="DIR",
                      help="put the SQLite store and attachments in DIR (e.g. /var/lib/frontdesk)")
    init.add_argument("--no-store", action="store_true",
                      help="only write the config; the store is made by `frontdesk db upgrade`, "
                           "run as the user that owns it")
    check = sub.add_parser("check", parents=[common, as_json], help="validate the config")
    check.add_argument("--show", action="store_true",
                       help="print the effective config (secrets masked)")
    db = sub.add_parser("db", parents=[common], help="store maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=Parser,
                               metavar="COMMAND")
    db_sub.add_parser("upgrade", parents=[common], help="apply the store's migrations")
    conv = sub.add_parser("conversations", parents=[common, as_json],
                          help="list conversations, newest first")
    conv.add_argument("--status", choices=["open", "pending", "snoozed", "resolved"])
    conv.add_argument("--limit", type=positive_int, metavar="N", help="at most N, newest first")
    show = sub.add_parser("show", parents=[common, as_json], help="one conversation")
    show.add_argument("ref", metavar="REF", help="FD-12 or 12")
    reply = sub.add_parser("reply", parents=[common], help="send a staff reply")
    reply.add_argument("ref", metavar="REF", help="the conversation, FD-12 or 12")
    reply.add_argument("text", metavar="TEXT", nargs="?", default="",
                       help="the reply, sent on the customer's channel (may be left out with "
                            "--attach)")
    reply.add_argument("--as", dest="author", metavar="NAME",
                       help="the staff member's name (default: $USER)")
    reply.add_argument("--attach", action="append", default=[], metavar="FILE",
                       help="send this file with the reply (repeatable; the channel's size and "
                            "type limits apply)")
    report = sub.add_parser("report", parents=[common], help="service figures")
    report.add_argument("--since", type=duration, default="7d",
                        help='the period up to now, like "7d", "24h" or "1d12h"')
    report.add_argument("--by", choices=["channel", "tag", "agent"],
                        help="one row per channel, conversation tag (a conversation with two "
                             "tags counts in both) or assignee, instead of per channel")
    report.add_argument("--channel", metavar="NAME",
                        help="only conversations and messages on this channel")
    report.add_argument("--tag", metavar="TAG", help="only conversations with this tag")
    report_format = report.add_mutually_exclusive_group()
    report_format.add_argument("--json", action="store_true", help="machine-readable output")
    report_format.add_argument("--csv", action="store_true",
                               help="one CSV row per channel and overall")
    journal = sub.add_parser("journal", parents=[common, as_json],
                             help="inbound messages that failed to process")
    journal.add_argument("--failed", action="store_true", help="only failed ones")
    journal.add_argument("--limit", type=positive_int, default=50, metavar="N")
    journal_sub = journal.add_subparsers(dest="journal_command", parser_class=Parser,
                                         metavar="retry|discard")
    retry = journal_sub.add_parser("retry", parents=[common, as_json],
                                   help="process failed messages again")
    retry.add_argument("id", nargs="?", type=int, metavar="ID",
                       help="one journal row (default: every failed one)")
    discard = journal_sub.add_parser(
        "discard", parents=[common],
        help="keep a failed message that can never be processed, but stop counting it as "
             "failed (audited)")
    discard.add_argument("id", type=int, metavar="ID",
                         help="the failed journal row (see `frontdesk journal --failed`)")
    discard.add_argument("--as", dest="author", metavar="NAME",
                         help="who discards it, for the audit (default: $USER)")
    cli_desk.add_parsers(sub, common, as_json, Parser)
    cli_contacts.add_parsers(sub, common, as_json, Parser)
    cli_outbox.add_parsers(sub, common, as_json, Parser)
    cli_log.add_parsers(sub, common, as_json, Parser)
    cli_tokens.add_parsers(sub, common, as_json, Parser)
    cli_oauth.add_parsers(sub, common, as_json, Parser)
    cli_knowledge.add_parsers(sub, common, as_json, Parser)
    cli_cc.add_parsers(sub, common, as_json, Parser)
    _with_examples(p)
    return p


EXAMPLES = {
    "run": "frontdesk run -c /etc/frontdesk/frontdesk.toml",
    "init": "frontdesk init -c /etc/frontdesk/frontdesk.toml --state-dir /var/lib/frontdesk "
            "--no-store",
    "check": "frontdesk check --show\n  FRONTDESK_SLACK__BOT_TOKEN=xoxb-... frontdesk check --json",
    "db upgrade": "frontdesk db upgrade -c /etc/frontdesk/frontdesk.toml",
    "conversations": "frontdesk conversations --status open --limit 20",
    "show": "frontdesk show FD-12\n  frontdesk show 12 --json",
    "reply": 'frontdesk reply FD-12 "It left our warehouse today." --as Grace',
    "report": "frontdesk report --since 30d\n  frontdesk report --since 1d12h --csv\n"
              "  frontdesk report --by tag --json\n  frontdesk report --by agent --channel email",
    "journal": "frontdesk journal --failed",
    "journal retry": "frontdesk journal retry 31",
    "journal discard": "frontdesk journal discard 31 --as Grace",
    "search": 'frontdesk search refund OR return "never arrived"',
    "resolve": "frontdesk resolve FD-12 --as Grace\n"
               '  frontdesk resolve FD-12 --note "Re-sent the invoice with the VAT number"',
    "tag": "frontdesk tag FD-12 refund kettle\n  frontdesk tag FD-12 kettle --remove",
    "cc": "frontdesk cc FD-12\n  frontdesk cc FD-12 -bob@example.org +carol@example.org --as Grace",
    "similar": "frontdesk similar FD-12\n  frontdesk similar FD-12 --limit 5 --json",
    "saved-reply": "frontdesk saved-reply list",
    "saved-reply add": 'frontdesk saved-reply add tracking "Hi {first_name}, your parcel\'s '
                       'tracking link is in the shipping mail."',
    "saved-reply list": "frontdesk saved-reply list --json",
    "saved-reply remove": "frontdesk saved-reply remove tracking --as Grace",
    "reopen": "frontdesk reopen FD-12",
    "assign": "frontdesk assign FD-12 Grace\n  frontdesk assign FD-12 -",
    "snooze": "frontdesk snooze FD-12 2h\n  frontdesk snooze FD-12 morning",
    "contact show": "frontdesk contact show ada@example.org",
    "contact merge": "frontdesk contact merge 7 +15550001111",
    "contact link": "frontdesk contact link 7 ada@example.org --ref FD-12",
    "contact tag": "frontdesk contact tag ada@example.org vip lang:de\n"
                   "  frontdesk contact tag 7 vip --remove",
    "contact export": "frontdesk contact export ada@example.org > ada.json",
    "contact erase": "frontdesk contact erase ada@example.org --confirm --as Grace",
    "log": 'frontdesk log phone "Parcel arrived crushed, wants a refund" --name "Ada Lovelace" '
           "--email ada@example.org --as Grace",
    "outbox": "frontdesk outbox --failed",
    "outbox retry": "frontdesk outbox retry 42\n  frontdesk outbox retry --all",
    "outbox cancel": "frontdesk outbox cancel 42 --as Grace",
    "token": "frontdesk token create shop --scope write",
    "token create": "frontdesk token create shop --scope write\n  frontdesk token create dashboard",
    "token list": "frontdesk token list --json",
    "token revoke": "frontdesk token revoke shop --as Grace",
    "oauth": "frontdesk oauth login microsoft --account support@example.com",
    "oauth login": "frontdesk oauth login microsoft --account support@example.com\n"
                   "  frontdesk oauth login google --account support@example.com --port 8765",
    "oauth status": "frontdesk oauth status --json",
    "oauth logout": "frontdesk oauth logout --account support@example.com --as Grace",
    "oauth key": "frontdesk oauth key",
}
"""An example under each command's ``--help`` (keyed by the command's words)."""


def _with_examples(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> None:
    for action in parser._actions:  # argparse keeps its sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                key = (*words, name)
                example = EXAMPLES.get(" ".join(key))
                if example is not None:
                    child.epilog = "example:\n  " + example
                    child.formatter_class = argparse.RawDescriptionHelpFormatter
                _with_examples(child, key)


# --- commands ---------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from frontdesk.daemon.process.app import Daemon

    settings = settings_of(args)
    _logging(settings)
    daemon = Daemon(settings)
    try:
        asyncio.run(daemon.run())
    except OSError as exc:
        raise Failure(f"cannot start: {exc.strerror or exc}") from None
    return 1 if daemon.stop_failed else 0


def cmd_init(args: argparse.Namespace) -> int:
    path = resolve_path(getattr(args, "config", None))
    if path.exists():
        print(f"{path} exists; left as it is")
    else:
        starter = files("frontdesk.config").joinpath("frontdesk.example.toml").read_text()
        if args.state_dir:
            state = Path(args.state_dir).absolute()
            starter = starter.replace('url = "sqlite+aiosqlite:///./frontdesk.db"',
                                      f'url = "sqlite+aiosqlite:///{state}/frontdesk.db"', 1)
            starter = starter.replace('data_dir = "./frontdesk-data"',
                                      f'data_dir = "{state}/attachments"', 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0640 at once (it will hold secrets), never 0644 for a moment first.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640), "w",
                       encoding="utf-8") as dst:
            dst.write(starter)
        os.chmod(path, 0o640)
        print(f"wrote {path}")
    settings = load_settings(path, Settings, check_template=check_template)
    if args.no_store:
        print("store left to `frontdesk db upgrade` (the service runs it before it starts)")
        return 0

    async def work(store: Any) -> int:
        print(f"store ready: {_safe_url(settings.database.url)}")
        return 0

    return asyncio.run(with_store(settings, work))


def cmd_check(args: argparse.Namespace) -> int:
    from frontdesk.daemon.process.app import build_channels, data_dir_problem

    path = resolve_path(getattr(args, "config", None))
    try:
        settings = load_settings(path, Settings, check_template=check_template)
        problem = data_dir_problem(settings.daemon.data_dir, make_files_dir=False)
        if problem is not None:
            raise ConfigError(str(path), [("daemon.data_dir", problem)])
    except ConfigError as exc:
        if not args.json:
            raise
        print_json({"config": str(path), "ok": False,
                    "problems": [{"key": key, "message": message}
                                 for key, message in exc.problems]})
        return 1
    disabled = build_channels(settings)[1]
    warnings = []
    if not settings.email.inbox_addresses:
        warnings.append("email.inbox_addresses is empty; the SMTP server will refuse all mail")
    if args.json:
        print_json({"config": str(path), "ok": True, "disabled": disabled,
                    "warnings": warnings, "settings": masked(settings)})
        return 0
    # With --show, stdout is the effective config alone (one JSON document); the verdict goes
    # to stderr.
    out = sys.stderr if args.show else sys.stdout
    print(f"{path}: OK", file=out)
    for line in disabled:
        print(f"  {line}", file=out)
    for warning in warnings:
        print(f"  warning: {warning}", file=out)
    if args.show:
        print_json(masked(settings))
    return 0


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as JSON-able data, every secret shown as ********."""
    data = settings.model_dump(mode="json", by_alias=True)
    data["database"]["url"] = _safe_url(settings.database.url)
    return data


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_db(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    from frontdesk.storage.db import Store

    async def work() -> int:
        store = Store.from_settings(settings.database)
        try:
            await store.upgrade()
            revisions = ", ".join(sorted(await store.current_revisions()))
            print(f"store migrated: revision {revisions}")
        finally:
            await store.dispose()
        return 0

    return asyncio.run(work())


def cmd_conversations(args: argparse.Namespace) -> int:
    from frontdesk.domain.conversations import conversation_view
    from frontdesk.storage.models import Conversation

    settings = settings_of(args)

    when = local_times(settings.sla.timezone)

    async def work(store: Any) -> int:
        query = select(Conversation).order_by(Conversation.created_at.desc(),
                                              Conversation.id.desc())
        if args.status:
            query = query.where(Conversation.status == args.status)
        if args.limit:
            query = query.limit(args.limit)
        async with store.reader() as s:
            rows = [conversation_view(c) for c in (await s.execute(query)).unique().scalars()]
        if args.json:
            print_json(rows)
        elif not rows:
            print("no conversations")
        else:
            for c in for_terminal(rows):
                who = c["contact"]["name"] or ""
                address = (c["contact"]["identities"] or [{"address": ""}])[0]["address"]
                print(f"{c['reference']:>8}  {c['status']:8} {c['channel']:8} "
                      f"{when(c['created_at'])}  {who} <{address}>  "
                      f"{c['subject']}")
        return 0

    return asyncio.run(with_store(settings, work, read_only=True))


def cmd_show(args: argparse.Namespace) -> int:
    from frontdesk.domain.contacts import other_conversations
    from frontdesk.domain.conversations import (
        conversation_detail,
        get_conversation,
        messages_of,
        waiting_reasons,
    )

    settings = settings_of(args)

    async def work(store: Any) -> int:
        async with store.reader() as s:
            conversation = await get_conversation(s, args.ref)
            messages = await messages_of(s, conversation.id)
            detail = conversation_detail(conversation, messages,
                                         await other_conversations(s, conversation),
                                         waiting=await waiting_reasons(s, messages))
        if args.json:
            print_json(detail)
        else:
            print(_format_detail(for_terminal(detail), local_times(settings.sla.timezone)))
        return 0

    return asyncio.run(with_store(settings, work, read_only=True))


def _format_detail(d: dict[str, Any], when: Callable[[str | None], str]) -> str:
    """``frontdesk show`` for a person, from the JSON view passed through :func:`for_terminal`."""
    from frontdesk.channels.email.quotes import folded
    from frontdesk.domain.sla import sla_lines

    contact = d["contact"]
    ids = ", ".join(f"{i['channel']}:{i['address']}" for i in contact["identities"])
    lines = [
        f"{d['reference']}  {d['subject']}",
        f"  status {d['status']}, priority {d['priority']}, channel {d['channel']}"
        + (f", assigned to {d['assignee']}" if d["assignee"] else ""),
        f"  contact {contact['name'] or '(no name)'} ({ids})",
        f"  created {when(d['created_at'])}, first response due "
        f"{when(d['first_response_due_at'])}"
        + (f", answered {when(d['first_responded_at'])}" if d["first_responded_at"] else ""),
        *sla_lines(d, when),
        *([f"  tags {' '.join(d['tags'])}"] if d.get("tags") else []),
        *([f"  cc {', '.join(d['cc'])}"] if d.get("cc") else []),
        *([f"  resolution note: {line}" if i == 0 else f"    {line}"
           for i, line in enumerate(d["resolution_note"].splitlines())]
          if d.get("resolution_note") else []),
        *_other_lines(d.get("other_conversations") or []),
        "",
    ]
    for m in d["messages"]:
        arrow = "<-" if m["direction"] == "in" else "->"
        who = m["author_name"] or m["address"] or m["author"]
        status = f" [{m['delivery_status']}]" if m["delivery_status"] else ""
        flags = " (automated)" if m["automated"] else ""
        flags += " (internal note)" if m.get("note") else ""
        lines.append(f"{arrow} {when(m['created_at'])} {m['author']} {who}{status}{flags}")
        if m.get("failure_reason"):
            lines.append(f"   failed: {m['failure_reason']}")
        if m.get("waiting_reason"):
            lines.append(f"   waiting: {m['waiting_reason']}")
        for a in m["attachments"]:
            lines.append(f"   attachment: {a['filename']} ({a['content_type']}, {a['size']} bytes)")
        text = folded(m["text"] or "", m.get("text_new"))  # quoted history folded away
        lines.extend("   " + line for line in text.splitlines() or [""])
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _other_lines(others: list[dict[str, Any]]) -> list[str]:
    """The contact's other conversations, one short line each."""
    if not others:
        return []
    shown = [f"{o['reference']} ({o['channel']}, {o['status']}) {o['subject']}".rstrip()
             for o in others]
    return ["  other conversations: " + shown[0], *("                       " + o
                                                    for o in shown[1:])]


def cmd_reply(args: argparse.Namespace) -> int:
    from frontdesk.daemon.process.registry import reply_composer
    from frontdesk.domain.conversations import add_staff_reply, get_conversation

    settings = settings_of(args)
    author = args.author or os.environ.get("USER") or "staff"
    given = [_read_attachment(path) for path in args.attach]

    async def work(store: Any) -> int:
        files = await _store_attachments(settings, given)
        async with store.session() as s:
            conversation = await get_conversation(s, args.ref)
            message = await add_staff_reply(s, conversation, args.text, author=author,
                                            replies=reply_composer(settings), now=utcnow(),
                                            files=files)
        if message.is_note:  # nothing reaches the customer (a logged contact, no address)
            print(f"{conversation.reference}: {message.failure_reason}")
            return 0
        print(f"queued reply #{message.id} to {terminal_text(message.address)} on "
              f"{conversation.reference}"
              + (f" with {len(files)} file(s)" if files else ""))
        return 0

    return asyncio.run(with_store(settings, work))


def _read_attachment(path: str) -> Any:
    """``--attach FILE``: its bytes, named by the file's name (the type from the name)."""
    from frontdesk.domain.files import MAX_FILE_BYTES, size_words
    from frontdesk.domain.messages import Attachment

    file = Path(path).expanduser()
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            raise Failure(f"--attach {path}: larger than the {size_words(MAX_FILE_BYTES)} a "
                          "reply's file may be")
        data = file.read_bytes()
    except OSError as exc:
        raise Failure(f"--attach {path}: {exc.strerror or exc}") from None
    return Attachment(file.name, "", data)


async def _store_attachments(settings: Any, given: list[Any]) -> list[Any]:
    """The reply's files in the attachment store (``daemon.data_dir``), once each."""
    if not given:
        return []
    from frontdesk.domain.files import FileProblem, store_files
    from frontdesk.storage.attachments import AttachmentStore

    try:
        return await asyncio.to_thread(store_files, given,
                                       AttachmentStore(settings.daemon.data_dir))
    except FileProblem as exc:
        raise Failure(f"--attach: {exc}") from None
    except OSError as exc:
        raise Failure(f"cannot store the files in daemon.data_dir "
                      f"({settings.daemon.data_dir}): {exc.strerror or exc}") from None


def cmd_report(args: argparse.Namespace) -> int:
    from frontdesk.domain.report import Filters, build_report, format_report, report_csv

    settings = settings_of(args)
    since = args.since
    filters = Filters(channel=args.channel or None, tag=args.tag or None)

    async def work(store: Any) -> int:
        async with store.reader() as s:
            report = await build_report(s, since=since, now=utcnow(),
                                        calendar=calendar_from_settings(settings.sla),
                                        filters=filters, by=args.by)
        if args.json:
            print_json(report)
        elif args.csv:
            sys.stdout.write(report_csv(report))
        else:
            print(format_report(for_terminal(report)))
        return 0

    return asyncio.run(with_store(settings, work, read_only=True))


def cmd_journal(args: argparse.Namespace) -> int:
    from frontdesk.domain.conversations import iso
    from frontdesk.storage.models import InboundJournal, core_table

    settings = settings_of(args)

    def view(row: Any) -> dict[str, Any]:
        return {"id": row.id, "channel": row.channel, "remote_id": row.remote_id,
                "state": row.state, "received_at": iso(row.received_at),
                "processed_at": iso(row.processed_at), "attempts": row.attempts,
                "error": row.error.splitlines()[0] if row.error else None,
                "size": row.size, "message_id": row.message_id}

    async def listing(store: Any) -> int:
        t = core_table(InboundJournal)
        from sqlalchemy import func

        query = select(t.c.id, t.c.channel, t.c.remote_id, t.c.state, t.c.received_at,
                       t.c.processed_at, t.c.attempts, t.c.error, t.c.message_id,
                       func.length(t.c.raw).label("size")).order_by(t.c.id.desc())
        query = query.where(t.c.state == "failed") if args.failed else query
        async with store.reader() as s:
            rows = [view(r) for r in (await s.execute(query.limit(args.limit))).all()]
        if args.json:
            print_json(rows)
        elif not rows:
            print("no failed messages" if args.failed else "the journal is empty")
        else:
            for r in for_terminal(rows):
                print(f"#{r['id']:<6} {r['state']:9} {r['channel']:8} {r['received_at']}  "
                      f"{r['remote_id'][:60]}" + (f"\n        {r['error']}" if r["error"] else ""))
        return 0

    async def retry(store: Any) -> int:
        return await _retry(store, settings, args)

    async def discard(store: Any) -> int:
        from frontdesk.daemon.process.processor import NotDiscardable, discard_failed

        author = args.author or os.environ.get("USER") or "staff"
        try:
            error = await discard_failed(store, args.id, actor=author, now=utcnow())
        except NotDiscardable as exc:
            raise Failure(str(exc)) from None
        print(f"journal #{args.id} discarded by {author}; it is kept but no longer counted as "
              f"failed ({terminal_text(error or 'no error recorded')})")
        return 0

    if not args.journal_command:  # the listing only reads
        return asyncio.run(with_store(settings, listing, read_only=True))
    return asyncio.run(with_store(settings, discard if args.journal_command == "discard"
                                  else retry))


async def _retry(store: Any, settings: Settings, args: argparse.Namespace) -> int:
    from frontdesk.daemon.process.app import Daemon
    from frontdesk.daemon.process.processor import retry_failed

    ids = await retry_failed(store, args.id)
    if not ids:
        if args.id is not None:
            raise Failure(f"journal #{args.id} is not a failed message")
        if args.json:
            print_json([])
        else:
            print("no failed messages")
        return 0
    daemon = Daemon(settings)  # the same parsers and rules as the running daemon
    try:
        outcomes = []
        for start in range(0, len(ids), daemon.processor.batch_size):
            outcomes += await daemon.processor.process_pending(
                ids[start:start + daemon.processor.batch_size])
    finally:
        await daemon.store.dispose()
    failed = sum(1 for o in outcomes if o.error)
    if args.json:  # one JSON document on stdout, nothing else
        print_json([{"id": o.journal_id, "conversation_id": o.conversation_id,
                      "error": o.error.splitlines()[0] if o.error else None} for o in outcomes])
        return 1 if failed else 0
    for o in outcomes:
        if o.error:
            print(f"#{o.journal_id}: failed again: {terminal_text(o.error.splitlines()[0])}")
        elif o.conversation_id:
            print(f"#{o.journal_id}: stored in FD-{o.conversation_id}")
    return 1 if failed else 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "init": cmd_init, "check": cmd_check, "db": cmd_db,
    "conversations": cmd_conversations, "show": cmd_show, "reply": cmd_reply,
    "report": cmd_report, "journal": cmd_journal,
    **cli_desk.COMMANDS,  # search, resolve, reopen, assign, snooze
    **cli_contacts.COMMANDS,  # contact show|merge|link
    **cli_outbox.COMMANDS,  # outbox [retry|cancel]
    **cli_log.COMMANDS,  # log phone|in-person|letter
    **cli_tokens.COMMANDS,  # token create|list|revoke
    **cli_oauth.COMMANDS,  # oauth login|status|logout|key
    **cli_knowledge.COMMANDS,  # tag, similar, saved-reply add|list|remove
    **cli_cc.COMMANDS,  # cc REF [+ADDR|-ADDR]...
}


def _logging(settings: Settings) -> None:
    """The daemon's logging: ``daemon.log_level`` and ``daemon.log_format`` on stderr, with
    syslog priorities when stderr is systemd's journal stream (frontdesk.daemon.process.logs)."""
    from frontdesk.daemon.process.logs import configure

    configure(settings.daemon.log_level, settings.daemon.log_format)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "run":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with private_umask():
            code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that went away (| head) shows here, inside the try
        return code
    except BrokenPipeError:
        # The reader stopped reading (`frontdesk conversations | head`): that is not an error.
        # Point stdout at /dev/null so the interpreter's own flush at exit stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except ConfigError as exc:
        print(f"frontdesk: config {exc.path} is not valid:", file=sys.stderr)
        for key, message in exc.problems:
            print(f"  {key}: {message}" if key else f"  {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from frontdesk.domain.conversations import CannotReply, UnknownConversation
        from frontdesk.storage.db import StoreNotReady

        if isinstance(exc, Failure | UnknownConversation | CannotReply | StoreNotReady):
            print(f"frontdesk: {terminal_text(str(exc))}", file=sys.stderr)
        else:
            log.debug("command failed", exc_info=True)
            print(f"frontdesk: {type(exc).__name__}: {terminal_text(_one_line(exc))}",
                  file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else "failed"


if __name__ == "__main__":
    sys.exit(main())



