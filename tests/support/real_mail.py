"""Real mail from other projects' test suites (``shared/corpora``, beside the repository) and the
yardsticks frontdesk is measured by on it: how often a quoted reply's new part comes out right,
how often automated mail is told from a person's, how often a bounce is recognised and tied to
the mail it returns.

Standard library only, so ``benchmarks/quotes_compare.py`` can run it under another
interpreter (one with talon installed) to compare splitters on the same fixtures.

The quote fixtures give each mail's new part (the upstream project's own expectation); which of
a mail's lines are *quoted* is ours to say, in ``tests/channels/email/data/quote_labels.json``:
for every fixture the line ranges (1-based, inclusive, of the text as read here) of the quote
headers (``On ... wrote:``, Outlook's ``From:/Sent:`` block, ``-----Original Message-----``)
and the quoted lines (``>``/``|`` blocks; everything below an unmarked header). Signatures and
list footers are neither new nor quoted: a splitter may keep them.
"""

from __future__ import annotations

import email
import email.utils
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import policy
from email.message import Message
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LABELS = REPO_ROOT / "tests" / "channels" / "email" / "data" / "quote_labels.json"


def corpora() -> Path | None:
    """The real-mail corpora: ``FRONTDESK_CORPORA`` if set, else the copy kept in the repository
    (``tests/data/corpora``: data from other projects' test suites, byte for byte with each
    project's licence file, see its README), else ``shared/corpora`` beside it; None if none."""
    override = os.environ.get("FRONTDESK_CORPORA")
    candidates = [Path(override)] if override else [
        REPO_ROOT / "tests" / "data" / "corpora", REPO_ROOT.parent / "shared" / "corpora"]
    return next((p for p in candidates if p.is_dir()), None)


# --- quoted replies -----------------------------------------------------------------------------

@dataclass(frozen=True)
class QuoteFixture:
    name: str  # "<corpus>/<file>"
    text: str  # the mail's text (the text/plain part of an .eml)
    expected: str  # its new part, as the upstream project's test expects it


def _plain_text(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=policy.compat32)
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            data = part.get_payload(decode=True)
            charset = part.get_content_charset() or "utf-8"
            text = data.decode(charset, "replace") if isinstance(data, bytes) else ""
            return text.replace("\r\n", "\n")
    return ""


def quote_fixtures(root: Path) -> list[QuoteFixture]:
    """The 94 quoted-reply fixtures: email_reply_trimmer's 64 (``emails/`` → ``trimmed/``),
    email_reply_parser's 18 (``expected.json``), talon's 12 standard replies (the text/plain
    part; ``<name>_reply_text`` or "Hello", as talon's own test has it)."""
    quotes = root / "quotes"
    found: list[QuoteFixture] = []
    trimmer = quotes / "email_reply_trimmer"
    for path in sorted((trimmer / "emails").glob("*.txt")):
        expected = (trimmer / "trimmed" / path.name).read_text(encoding="utf-8")
        found.append(QuoteFixture(f"email_reply_trimmer/{path.name}",
                                  path.read_text(encoding="utf-8"), expected))
    parser = quotes / "email_reply_parser"
    wanted = json.loads((parser / "expected.json").read_text(encoding="utf-8"))
    for name in sorted(wanted):
        found.append(QuoteFixture(f"email_reply_parser/{name}",
                                  (parser / name).read_text(encoding="utf-8"), wanted[name]))
    talon = quotes / "talon"
    for path in sorted(talon.glob("*.eml")):
        reply = talon / f"{path.stem}_reply_text"
        expected = reply.read_text(encoding="utf-8") if reply.exists() else "Hello"
        found.append(QuoteFixture(f"talon/{path.name}", _plain_text(path.read_bytes()),
                                  expected))
    return found


def quote_labels() -> dict[str, list[list[int]]]:
    labels: dict[str, list[list[int]]] = json.loads(LABELS.read_text(encoding="utf-8"))
    return labels


@dataclass(frozen=True)
class Verdict:
    kept: bool  # every line of the expected new part is there, in order
    clean: bool  # no quoted line is

    @property
    def right(self) -> bool:
        return self.kept and self.clean


def judge(fixture: QuoteFixture, quoted: list[list[int]], output: str) -> Verdict:
    """Whether ``output`` (what a splitter kept as the new part) keeps the new part and no
    quoted line. Lines are compared without surrounding white space; a line that is in the
    quote and also elsewhere (a second "Thanks,") counts only when kept more often than it
    appears outside the quote."""
    lines = fixture.text.replace("\r\n", "\n").split("\n")
    in_quote = {n - 1 for first, last in quoted for n in range(first, last + 1)}
    allowed = Counter(line.strip() for i, line in enumerate(lines)
                      if i not in in_quote and line.strip())
    expected = [line.strip() for line in fixture.expected.split("\n") if line.strip()]
    kept_lines = [line.strip() for line in output.replace("\r\n", "\n").split("\n")
                  if line.strip()]
    rest = iter(kept_lines)
    kept = all(any(line == candidate for candidate in rest) for line in expected)
    counts = Counter(kept_lines)
    clean = all(counts[line] <= allowed[line] for line in counts)
    return Verdict(kept, clean)


def quote_rate(root: Path, split: Callable[[str], str]) -> tuple[float, list[tuple[str, Verdict]]]:
    """The share of fixtures ``split`` gets right, and every fixture's verdict."""
    labels = quote_labels()
    verdicts = [(f.name, judge(f, labels[f.name], split(f.text))) for f in quote_fixtures(root)]
    return sum(v.right for _, v in verdicts) / len(verdicts), verdicts


# --- automated mail and bounces -----------------------------------------------------------------

def mail_bytes(path: Path) -> bytes:
    """A sample's bytes without a leading mbox ``From `` line."""
    raw = path.read_bytes()
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    return raw


def automated_samples(root: Path) -> Iterator[tuple[str, bytes, bool]]:
    """sisimai's samples as (name, mail, whether it is automated): auto-replies (``rfc3834-*``),
    feedback reports (``arf-*``) and a bounce (``not-rb-issue-368-bug``) are; the two ordinary
    mails (``not-is-not-bounce-*``) are not."""
    for path in sorted((root / "automated" / "sisimai").glob("*.eml")):
        yield path.name, mail_bytes(path), not path.name.startswith("not-is-not-bounce")


BOUNCE_SAMPLES_ENV = "FRONTDESK_BOUNCE_SAMPLES"
NOT_BOUNCES = frozenset({"groupwise_03.txt"})
"""flufl.bounce's samples that are a person's mail (its tests find no bounce in them)."""


def bounce_samples_dir(root: Path | None) -> Path | None:
    """Where the real-world bounces are: ``FRONTDESK_BOUNCE_SAMPLES`` (a folder of mails, such as
    the ``flufl/bounce/tests/data`` folder of flufl.bounce 4.0's source distribution), else
    ``bounces`` in the corpora (flufl.bounce's samples); None when neither exists."""
    override = os.environ.get(BOUNCE_SAMPLES_ENV)
    if override:
        return Path(override) if Path(override).is_dir() else None
    path = root / "bounces" if root is not None else None
    return path if path is not None and path.is_dir() else None


def bounce_samples(folder: Path) -> Iterator[tuple[str, bytes, bool]]:
    """(name, mail, whether it is a bounce or other automated mail) for every ``*.txt`` and
    ``*.eml`` in ``folder``, recursively."""
    for path in sorted(folder.rglob("*")):
        if path.suffix in (".txt", ".eml") and path.is_file():
            yield path.name, mail_bytes(path), path.name not in NOT_BOUNCES


_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*<([^<>\s]+)>", re.IGNORECASE | re.MULTILINE)
_ANGLE = re.compile(r"<([^<>\s]+)>")


def returned_message_id(raw: bytes) -> str | None:
    """The Message-ID of the mail a bounce returns: that of an attached ``message/rfc822`` (or
    ``text/rfc822-headers``) part, else the first Message-ID header quoted below the bounce's
    own header block. None when it returns none."""
    msg = email.message_from_bytes(raw, policy=policy.compat32)
    for part in msg.walk():
        kind = part.get_content_type()
        payload = part.get_payload()
        if kind in ("message/rfc822", "message/rfc822-headers") and isinstance(payload, list):
            found = _ANGLE.findall(str(payload[0].get("message-id", "")))
            if found:
                return str(found[0])
        elif kind == "text/rfc822-headers":
            data = part.get_payload(decode=True)
            match = _MESSAGE_ID.search(data if isinstance(data, bytes) else b"")
            if match:
                return match.group(1).decode("ascii", "replace")
    body = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)
    if len(body) < 2:
        return None
    match = _MESSAGE_ID.search(body[1])
    return match.group(1).decode("ascii", "replace") if match else None


def from_address(raw: bytes) -> str:
    """The first address of the mail's From header ("" when it has none)."""
    msg: Message = email.message_from_bytes(raw.split(b"\n\n", 1)[0] + b"\n\n",
                                            policy=policy.compat32)
    addresses = email.utils.getaddresses([str(msg.get("from", ""))])
    return addresses[0][1] if addresses else ""
