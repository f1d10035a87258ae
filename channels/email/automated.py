"""Automated mail: what tells an auto-reply, a bounce, a feedback report or bulk mail from a
person's mail.

Such mail is stored but never acknowledged, starts no SLA clock and reopens nothing (see the
README's "Automated mail"). The signs, in the order they are looked at (the first one found is
the reason recorded):

* frontdesk's own mail coming back (its Message-IDs end in ``.frontdesk@<domain>``);
* an auto-reply's headers: ``Auto-Submitted`` other than ``no`` (RFC 3834), ``X-Autoreply``,
  ``X-Autorespond``, Apple's vacation reply (``X-Apple-Action: VACATION``), ``Precedence:
  auto_reply``; Exchange's ``X-Auto-Response-Suppress`` together with an auto-reply's subject
  ("Automatic reply:", "Automatische Antwort:", ...). ``X-Auto-Response-Suppress`` alone is
  *not* a sign: Exchange and Outlook put it on ordinary mail too;
* bulk mail: ``Precedence: bulk/list/junk``, ``X-Loop``;
* a bounce (:func:`frontdesk.channels.email.dsn.bounce_reason`), another report
  (``multipart/report``: feedback, read receipts) or Microsoft's complaint report (a returned
  mail carrying ``X-HmXmrOriginalRecipient``);
* the null envelope sender (or ``Return-Path: <>`` over IMAP), a mail system's or a no-reply
  sender address;
* a mailing list (``List-Id``, ``List-Unsubscribe``).

Pure functions on headers already read from a compat32 tree; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from email.message import Message

from frontdesk.channels.email.dsn import BOUNCE_LOCALS, bounce_reason
from frontdesk.channels.email.ids import is_own_message_id

__all__ = ["automated_reason", "is_null_sender"]

HEADERS = frozenset({
    "auto-submitted", "precedence", "x-precedence", "list-id", "list-unsubscribe",
    "x-autoreply", "x-autorespond", "x-autoresponse", "x-auto-response-suppress",
    "x-apple-action", "x-failed-recipients", "return-path", "x-loop",
})
"""The headers this module reads (lower case); the parser must keep them."""

AUTO_REPLY_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponse")
BULK_PRECEDENCE = frozenset({"bulk", "list", "junk", "auto_reply", "auto-reply"})
ROBOT_LOCALS = frozenset({"noreply", "donotreply"}) | BOUNCE_LOCALS
"""Sender local parts (without ``-``, ``_``, ``.``) nobody answers from."""

AUTO_REPLY_SUBJECT = re.compile(
    r"^\s*(?:(?:re|aw|sv|antw)\s*:\s*)?(?:"
    r"automatic reply|auto[- ]?reply|auto[- ]?response|out of (?:the )?office|"
    r"abwesenheitsnotiz|automatische antwort|réponse automatique|respuesta automática|"
    r"risposta automatica|automatisch antwoord|resposta automática|autosvar|automatisk svar|"
    r"automatyczna odpowiedź|automatická odpověď|автоматический ответ|自动回复|自動回覆|自動応答"
    r")", re.IGNORECASE)
"""Subjects Exchange and other servers give an out-of-office reply, in several languages."""

_MAX_DEPTH = 4


def _first_token(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def _first(headers: Mapping[str, list[str]], name: str) -> str:
    values = headers.get(name)
    return values[0].strip() if values else ""


def _robot_local(address: str) -> bool:
    local = (address.rpartition("@")[0] or address).split("+", 1)[0].lower()
    return re.sub(r"[-_.\"\s]", "", local) in ROBOT_LOCALS


def _parts(msg: Message, depth: int = 0) -> Iterator[Message]:
    yield msg
    payload = msg.get_payload()
    if depth < _MAX_DEPTH and isinstance(payload, list):
        for part in payload:
            if isinstance(part, Message):
                yield from _parts(part, depth + 1)


def _complaint_report(msg: Message) -> bool:
    """Microsoft's complaint report (JMRP): a plain ``multipart/mixed`` that returns the mail
    complained of, marked with ``X-HmXmrOriginalRecipient``."""
    if msg.get_content_maintype() != "multipart":
        return False
    for part in _parts(msg):
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            if (isinstance(inner, list) and inner and isinstance(inner[0], Message)
                    and inner[0].get("x-hmxmroriginalrecipient") is not None):
                return True
    return False


def is_null_sender(envelope: str | None, headers: Mapping[str, list[str]]) -> bool:
    """The null envelope sender (``MAIL FROM:<>``); over IMAP, which has no envelope,
    ``Return-Path: <>``."""
    if envelope is not None:
        return envelope.strip() in ("", "<>")
    return _first(headers, "return-path") == "<>"


def automated_reason(headers: Mapping[str, list[str]], msg: Message, *, envelope: str | None,
                     envelope_address: str, sender: str, sender_name: str = "",
                     subject: str = "", text: str = "", message_ids: Sequence[str] = (),
                     own_domains: Sequence[str] = ()) -> str | None:
    """Why this mail looks automated (auto-reply, bounce, report, bulk, our own mail back), or
    None for a person's mail.

    ``headers`` maps lower-case names to their values (at least :data:`HEADERS`);
    ``envelope`` is the SMTP envelope sender (None over IMAP), ``envelope_address`` its
    address; ``sender`` the sender's address (or the bare local part of ``From: MAILER-DAEMON``);
    ``message_ids`` the mail's own Message-ID(s).
    """
    if own_domains:
        own = next((i for i in message_ids if is_own_message_id(i, own_domains)), None)
        if own is not None:
            return f"our own mail came back (Message-ID <{own}>)"
    if "auto-submitted" in headers:
        value = _first_token(headers["auto-submitted"][0])
        if value != "no":
            return f"Auto-Submitted: {value or 'present'}"
    for name in AUTO_REPLY_HEADERS:
        if name in headers:
            return f"{name.title()} header"
    if _first(headers, "x-apple-action").upper() == "VACATION":
        return "auto-reply (X-Apple-Action: VACATION)"
    if "x-auto-response-suppress" in headers and AUTO_REPLY_SUBJECT.search(subject):
        return "auto-reply (X-Auto-Response-Suppress and an auto-reply's subject)"
    for name in ("precedence", "x-precedence"):
        value = _first_token(_first(headers, name))
        if value in BULK_PRECEDENCE:
            return f"{name.title()}: {value}"
    if "x-loop" in headers:
        return f"X-Loop: {_first(headers, 'x-loop')[:100]}"
    if "x-failed-recipients" in headers:
        return "bounce (X-Failed-Recipients)"
    if msg.get_content_type() == "multipart/report":
        return f"report ({msg.get_param('report-type') or 'multipart/report'})"
    if _complaint_report(msg):
        return "report (a complaint about a mail: X-HmXmrOriginalRecipient)"
    null_sender = is_null_sender(envelope, headers)
    if null_sender:
        return "null envelope sender" if envelope is not None else (
            "null envelope sender (Return-Path)")
    bounce = bounce_reason(msg, headers, text, sender=sender, null_sender=null_sender,
                           subject=subject, sender_name=sender_name)
    if bounce is not None:
        return bounce
    for address in (sender, envelope_address):
        if address and _robot_local(address):
            return f"sent by {address.rpartition('@')[0] or address}"
    if "list-id" in headers:
        return "mailing list (List-Id)"
    if "list-unsubscribe" in headers:
        return "bulk mail (List-Unsubscribe)"
    return None

