"""Bounces: what a delivery status notification says about mail we sent, in plain words.

A bounce names the mail it is about by the returned message's Message-ID (the
``message/rfc822`` or ``text/rfc822-headers`` part of an RFC 3464 report), an
``Original-Message-ID`` field, or the bounce's own In-Reply-To/References; older MTAs send a
plain text bounce with ``X-Failed-Recipients`` and the original headers quoted in the body. The
per-recipient ``Action``, ``Status`` and ``Diagnostic-Code`` fields become a reason a person
understands ("the address does not exist: 550 5.1.1 ... User unknown"), which frontdesk shows as
the failed reply's ``failure_reason``.

Pure functions on an already parsed compat32 tree; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from email.message import Message
from email.parser import HeaderParser

from frontdesk.domain.messages import DeliveryReport

_STATUS_WORDS = {
    "1.0": "the address was refused",
    "1.1": "the address does not exist",
    "1.2": "the recipient's domain does not exist or accepts no mail",
    "1.3": "the address is not valid",
    "1.6": "the recipient has moved and left no forwarding address",
    "1.10": "the recipient's domain accepts no mail (null MX)",
    "2.0": "the recipient's mailbox cannot take mail",
    "2.1": "the recipient's mailbox is disabled",
    "2.2": "the recipient's mailbox is full",
    "2.3": "the message is larger than the recipient accepts",
    "3.0": "the recipient's mail system cannot take mail",
    "3.4": "the message is too big for the recipient's mail system",
    "4.0": "the recipient's mail server could not be reached",
    "4.1": "the recipient's mail server did not answer",
    "4.2": "the connection to the recipient's mail server broke off",
    "4.4": "no way to deliver to the recipient's domain was found",
    "4.7": "delivery took too long and was given up",
    "5.0": "the recipient's mail server refused the message",
    "6.0": "the message's content or format was refused",
    "7.0": "the message was refused by the recipient's mail policy",
    "7.1": "the recipient's server refused the message (not permitted, or taken for spam)",
    "7.26": "the message failed the recipient's sender authentication checks",
}
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_DIAGNOSTIC_LINE = re.compile(r"^.*\b[45]\d\d[ -](?:[45]\.\d{1,3}\.\d{1,3}\b)?.*$", re.MULTILINE)
_MESSAGE_ID_LINE = re.compile(r"^\s*>?\s*Message-ID:\s*<([^<>\s]+)>", re.IGNORECASE | re.MULTILINE)
_ANGLE = re.compile(r"<([^<>\s]+)>")
_WS = re.compile(r"\s+")
_MAX_DEPTH = 20
_MAX_REASON = 600


def _ids(value: str | None) -> list[str]:
    if not value:
        return []
    found = _ANGLE.findall(value)
    return found or [w for w in value.split() if "@" in w]


def _walk(msg: Message) -> Iterable[Message]:
    stack = [(msg, 0)]
    while stack:
        part, depth = stack.pop(0)
        yield part
        if depth >= _MAX_DEPTH:
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend((sub, depth + 1) for sub in payload if isinstance(sub, Message))


def _returned_headers(part: Message) -> Message | None:
    kind = part.get_content_type()
    payload = part.get_payload()
    if kind in ("message/rfc822", "message/global") and isinstance(payload, list) and payload:
        inner = payload[0]
        return inner if isinstance(inner, Message) else None
    if kind in ("text/rfc822-headers", "message/global-headers"):
        data = part.get_payload(decode=True)
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(payload)
        return HeaderParser().parsestr(text, headersonly=True)
    return None


def _clean(value: str | None) -> str:
    return _WS.sub(" ", value or "").strip()


def _without_type(value: str) -> str:
    """``"smtp; 550 5.1.1 ..."`` → ``"550 5.1.1 ..."``; ``"rfc822; a@b"`` → ``"a@b"``."""
    kind, sep, rest = value.partition(";")
    return rest.strip() if sep and " " not in kind.strip() else value.strip()


def status_words(status: str) -> str | None:
    """Plain words for an enhanced status code (RFC 3463): ``5.1.1`` → the address does not
    exist."""
    match = _STATUS.search(status or "")
    if not match:
        return None
    _, subject, detail = match.groups()
    return _STATUS_WORDS.get(f"{subject}.{detail}") or _STATUS_WORDS.get(f"{subject}.0")


def _recipient_reason(recipient: str, status: str, diagnostic: str, failed: bool) -> str:
    words = status_words(status) or status_words(diagnostic)
    if words is None:
        words = ("the recipient's mail server refused the message" if failed
                 else "delivery is delayed; the mail server is still trying")
    detail = diagnostic or (f"status {status}" if status else "")
    who = f"to {recipient} " if recipient else ""
    lead = (f"the mail {who}could not be delivered" if failed
            else f"the mail {who}is delayed")
    return f"{lead}: {words}" + (f" ({detail})" if detail else "")


_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status notification|failure|has failed|failed)|"
    r"failure notice|returned mail|mail delivery (?:failed|system)|could not be delivered|"
    r"nondeliverable|non-delivery|unzustellbar|non remis|no entregado", re.IGNORECASE)
_BOUNCE_LOCALS = frozenset({"mailerdaemon", "postmaster"})


def _bounce_sender(address: str) -> bool:
    local = (address.rpartition("@")[0] or address).split("+", 1)[0].lower()
    return re.sub(r"[-_.]", "", local) in _BOUNCE_LOCALS


def read_report(msg: Message, headers: Mapping[str, list[str]], text: str, *, sender: str,
                null_sender: bool, subject: str) -> DeliveryReport | None:
    """The delivery report in a bounce, or None when the mail is not a bounce that names any
    message (an out-of-office reply, a list mail, a person's mail).

    A bounce is an RFC 3464 report, a mail with X-Failed-Recipients, or a text bounce: from
    MAILER-DAEMON/postmaster, or with the null sender and a bounce's subject. An auto-reply
    (``Auto-Submitted: auto-replied``, an out-of-office) is never taken for one, even with the
    null sender it should have.
    """
    is_report = (msg.get_content_type() == "multipart/report"
                 and str(msg.get_param("report-type") or "").lower() == "delivery-status")
    failed_header = headers.get("x-failed-recipients", [])
    auto_reply = any(v.split(";")[0].strip().lower() == "auto-replied"
                     for v in headers.get("auto-submitted", []))
    text_bounce = _bounce_sender(sender) or (null_sender and bool(_BOUNCE_SUBJECT.search(subject)))
    if auto_reply or not (is_report or failed_header or text_bounce):
        return None

    ids: list[str] = []
    blocks: list[Message] = []
    for part in _walk(msg) if is_report else ():
        kind = part.get_content_type()
        if kind in ("message/delivery-status", "message/global-delivery-status"):
            payload = part.get_payload()
            if isinstance(payload, list):
                blocks.extend(b for b in payload if isinstance(b, Message))
        else:
            returned = _returned_headers(part)
            if returned is not None:
                ids += _ids(returned.get("message-id"))
    for block in blocks:
        ids += _ids(block.get("original-message-id"))
    for name in ("original-message-id", "in-reply-to", "references"):
        for value in headers.get(name, []):
            ids += _ids(value)
    if not ids:
        ids += _MESSAGE_ID_LINE.findall(text)  # a plain text bounce quoting the original
    ids = list(dict.fromkeys("".join(i.split()) for i in ids if i))
    if not ids:
        return None

    reasons: list[str] = []
    recipients: list[str] = []
    failed_any = delayed_any = False
    for block in blocks:
        recipient = _without_type(_clean(block.get("final-recipient")
                                         or block.get("original-recipient")))
        action = _clean(block.get("action")).lower()
        status = _clean(block.get("status"))
        if not recipient and not action and not status:
            continue  # the per-message block (Reporting-MTA, Arrival-Date)
        diagnostic = _without_type(_clean(block.get("diagnostic-code")))
        failed = action == "failed" or (not action and status.startswith("5"))
        delayed = action == "delayed" or (not action and status.startswith("4"))
        if not (failed or delayed):
            continue  # delivered, relayed, expanded: nothing wrong
        failed_any |= failed
        delayed_any |= delayed
        if recipient:
            recipients.append(recipient)
        reasons.append(_recipient_reason(recipient, status, diagnostic, failed))
    if not blocks:
        # No machine-readable report: an older MTA's text bounce.
        failed_any = True
        for value in failed_header:
            recipients += [a.strip() for a in value.split(",") if a.strip()]
        diagnostic = next((_clean(m.group(0)) for m in _DIAGNOSTIC_LINE.finditer(text)), "")
        who = ", ".join(recipients)
        reasons.append(_recipient_reason(who, diagnostic, diagnostic, True))
    if not (failed_any or delayed_any):
        return None
    reason = "; ".join(dict.fromkeys(reasons))
    if len(reason) > _MAX_REASON:
        reason = reason[: _MAX_REASON - 1].rstrip() + "…"
    return DeliveryReport(original_ids=tuple(ids), failed=failed_any, reason=reason,
                          recipients=tuple(dict.fromkeys(recipients)))
