#!/usr/bin/env python3
"""Quoted-reply splitters on the same 94 real fixtures, by the same yardstick as
``tests/channels/email/test_real_mail_rates.py``: the share of mails whose extracted new part
keeps the whole new part and no quoted line (``tests/support/real_mail.py`` says how).

Compares frontdesk's splitter (``channels/email/quotes.py``) with mail-parser-reply and talon
when they can be imported. talon has had no release for years and pulls in scikit-learn and
lxml; give it a throwaway venv and run this script with that venv's python (frontdesk itself
need not be installed there: only the tools named are imported)::

    python3 -m venv /tmp/talon && /tmp/talon/bin/pip install talon
    PYTHONPATH=. /tmp/talon/bin/python -m benchmarks.quotes_compare --tool talon
    .venv/bin/python -m benchmarks.quotes_compare            # frontdesk, mail-parser-reply

``--verbose`` lists the fixtures each tool gets wrong; ``--corpora DIR`` points at the corpora
(default: ``shared/corpora`` beside the repository).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from tests.support import real_mail

Split = Callable[[str], str]


def _frontdesk(languages: tuple[str, ...]) -> Split:
    from frontdesk.channels.email.quotes import new_part

    return lambda text: new_part(text, languages) or text


def _mail_parser_reply(languages: list[str]) -> Split:
    from mailparser_reply import EmailReplyParser

    def split(text: str) -> str:
        reply: str = EmailReplyParser(languages=languages).read(text).latest_reply or ""
        return reply

    return split


def _talon() -> Split:
    from talon import quotations

    def split(text: str) -> str:
        reply: str = quotations.extract_from_plain(text)
        return reply

    return split


# mail-parser-reply's own language codes (its "david" is a mail client, not a language).
_MPR_LANGUAGES = ["en", "de", "cs", "da", "es", "fr", "it", "ja", "ko", "nl", "pl", "sv", "zh"]

TOOLS: dict[str, tuple[str | None, Callable[[], Split]]] = {
    "frontdesk": ("frontdesk", lambda: _frontdesk(("all",))),
    "frontdesk-en": ("frontdesk", lambda: _frontdesk(("en",))),
    "mail-parser-reply": ("mailparser_reply", lambda: _mail_parser_reply(["en"])),
    "mail-parser-reply-all": ("mailparser_reply", lambda: _mail_parser_reply(_MPR_LANGUAGES)),
    "talon": ("talon", _talon),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", action="append", choices=sorted(TOOLS),
                        help="a splitter to measure (repeatable; default: every importable one)")
    parser.add_argument("--corpora", type=Path, default=None)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    root = args.corpora or real_mail.corpora()
    if root is None:
        print("no corpora: give --corpora DIR (the shared corpora folder)", file=sys.stderr)
        return 2
    chosen = args.tool or list(TOOLS)
    for name in chosen:
        module, make = TOOLS[name]
        if module and importlib.util.find_spec(module) is None:
            print(f"{name:24s} not installed, skipped")
            continue
        rate, verdicts = real_mail.quote_rate(root, make())
        right = sum(v.right for _, v in verdicts)
        print(f"{name:24s} {right}/{len(verdicts)} = {rate:.1%}")
        if args.verbose:
            for fixture, verdict in verdicts:
                if not verdict.right:
                    what = "quoted line kept" if verdict.kept else "new part lost"
                    print(f"    {fixture}: {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
