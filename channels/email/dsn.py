"""Bounces: whether a mail is one, and what it says about mail we sent, in plain words.

:func:`bounce_reason` tells a bounce from a person's mail: an RFC 3464 report, ``X-Failed-
Recipients``, a mail system's own sender (``MAILER-DAEMON@``, ``postmaster@``, ``ndr@``,
InterScan's ``imss@``, ``"System Administrator"@``), or a bounce's subject together with the
null sender or with what mail delivery software writes (tables below). The envelope sender need
not be null: gateways (InterScan, Symantec) send their notices from an address of their own.

A bounce names the mail it is about by the returned message's Message-ID (a ``message/rfc822``
or ``text/rfc822-headers`` part, in an RFC 3464 report or a plain ``multipart/mixed``), an
``Original-Message-ID`` field, or the bounce's own In-Reply-To/References; older MTAs send a
plain text bounce with the original headers quoted in the body. The per-recipient ``Action``
(``failed``, and the ``failure``/``error`` some MTAs write), ``Status`` and ``Diagnostic-Code``
fields become a reason a person understands ("the address does not exist: 550 5.1.1 ... User
unknown"), which frontdesk shows as the failed reply's ``failure_reason``.

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
_REPLY_WORDS = {
    "550": "the recipient's mailbox is unavailable",
    "551": "the recipient is not at that mail server",
    "552": "the recipient's mailbox is full or the message too large",
    "553": "the address is not accepted",
    "554": "the recipient's mail server refused the message",
}
"""Plain SMTP reply codes (RFC 5321), for an older report with no enhanced status code."""
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY = re.compile(r"^\s*(5\d\d)\b")
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
    if (kind in ("message/rfc822", "message/global", "message/rfc822-headers")
            and isinstance(payload, list) and payload):
        inner = payload[0]
        return inner if isinstance(inner, Message) else None
    if kind in ("text/rfc822-headers", "message/global-headers"):
        data = part.get_payload(decode=True)
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(payload)
        return HeaderParser().parsestr(text, headersonly=True)
    return None


def _decoded(part: Message) -> str:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    try:
        return data.decode(part.get_content_charset() or "utf-8", "replace")
    except LookupError:  # an unknown charset
        return data.decode("latin-1")


def _clean(value: str | None) -> str:
    return _WS.sub(" ", value or "").strip()


def _without_type(value: str) -> str:
    """``"smtp; 550 5.1.1 ..."`` → ``"550 5.1.1 ..."``; ``"rfc822; a@b"`` → ``"a@b"``."""
    kind, sep, rest = value.partition(";")
    return rest.strip() if sep and " " not in kind.strip() else value.strip()


def status_words(status: str) -> str | None:
    """Plain words for an enhanced status code (RFC 3463): ``5.1.1`` → the address does not
    exist; for a bare SMTP reply code (``553 ...``) when there is none."""
    match = _STATUS.search(status or "")
    if not match:
        reply = _REPLY.match(status or "")  # "553 Exceeded maximum inbound message size"
        return _REPLY_WORDS.get(reply.group(1)) if reply else None
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


# --- is it a bounce? -----------------------------------------------------------------------------
# Without a machine-readable report, a bounce is told by who sent it, by its subject and by what
# mail delivery software writes in it. A person's mail about a parcel that "could not be
# delivered" has the subject and the words of a bounce, but none of the software's phrases.

BOUNCE_LOCALS = frozenset({
    "mailerdaemon", "postmaster", "mdaemon", "ndr", "imss", "systemadministrator",
    "maildeliverysystem", "maildeliverysubsystem",
})
"""Local parts (without ``-``, ``_``, ``.``, quotes and spaces) that only mail systems send from:
``MAILER-DAEMON@``, ``ndr@`` (non-delivery reports), ``imss@`` (InterScan),
``"System Administrator"@`` (old Exchange)."""

BOUNCE_NAMES = frozenset({
    "mail delivery system", "mail delivery subsystem", "mail delivery service",
    "delivery subsystem", "mailer-daemon", "mailer daemon", "postmaster", "mail administrator",
    "system administrator", "mail system",
})
"""Display names of mail systems (``Postmaster <>``): a sign with a bounce's subject."""

BOUNCE_SUBJECT = re.compile(
    r"undeliver|not delivered|non-?delivery|could not be delivered|"
    r"deliver(?:y|ing) (?:status|notification|failure|report|problem|warning|error|has failed|"
    r"failed)|(?:mail|message) delivery|delivery failure|failure (?:notice|delivery)|"
    r"returned mail|mail (?:error|failed|failure|system error)|failed mail|"
    r"(?:message|mail) delayed|delayed mail|not yet been delivered|"
    r"unzustellbar|nicht zugestellt|non remis|non recapitabile|no entregado|"
    r"no se pudo entregar", re.IGNORECASE)

BOUNCE_TEXT = tuple(re.compile(pattern, re.IGNORECASE) for pattern in (
    r"\b[45]\d\d[ -][45]\.\d{1,3}\.\d{1,3}\b",  # 550 5.1.1
    r"smtp error|remote host said|\b[45]\d\d (?:unknown user|user unknown|mailbox unavailable)",
    r"mail delivery (?:software|subsystem|system)|delivery status notification",
    r"this is an automatically generated|messaging security suite|interscan",
    r"the following (?:address(?:\(es\)|es)?|recipients?(?:\(s\))?|destination) "
    r"(?:failed|had permanent|could not|was not)",
    r"(?:could not|cannot|can't|couldn't|unable to|failed to) (?:be )?deliver(?:ed)? "
    r"(?:\w+ )?(?:message )?to (?:the following|one or more)",
    r"(?:could not|cannot|can't|couldn't|unable to) (?:be )?deliver(?:ed)? (?:\w+ )?"
    r"(?:message )?to:?\s+<?[\w.+-]+@[\w-]+\.",  # "... could not be delivered to\nada@x.org"
    r"did not reach (?:the following|some or all)|failed recipients?|permanent fatal error|"
    r"error delivering your (?:mail|message)|\b(?:no such user|user unknown|unknown user)\b",
    r"(?:original|returned) (?:message|mail) (?:follows|is attached)|-+ returned mail -+|"
    r"header and top \d+ lines|first \d+ lines of your original message|"
    r"header of the source mail|copy of the (?:original )?message|message headers follow",
    r"delivery attempts will continue|continue to try to deliver|still being retried|"
    r"please do not resend your original message",
))
"""What mail delivery software writes, and people do not."""

_FORWARDED = re.compile(r"^\s*(?:fwd?|fw|wg|tr|rv|enc|doorst)\s*:", re.IGNORECASE)
_MAX_SCAN = 20_000  # characters of the text searched for the software's phrases
_MAX_QUOTED = 200_000  # characters of a text bounce searched for the original's Message-ID
_NOT_FAILED = frozenset({"delivered", "relayed", "expanded", "delayed"})


def bounce_sender(address: str, name: str = "") -> bool:
    """Whether ``address`` is a mail system's own (``MAILER-DAEMON@``, ``postmaster@``,
    ``ndr@``, BATV ``prvs=...=ndr@``)."""
    local = (address.rpartition("@")[0] or address).split("+", 1)[0].lower()
    if local.startswith(("prvs=", "batv=")):
        local = local.rsplit("=", 1)[-1]
    return re.sub(r"[-_.\"\s]", "", local) in BOUNCE_LOCALS


def _software_text(text: str) -> bool:
    head = text[:_MAX_SCAN]
    return any(pattern.search(head) for pattern in BOUNCE_TEXT)


def bounce_reason(msg: Message, headers: Mapping[str, list[str]], text: str, *, sender: str,
                  null_sender: bool, subject: str, sender_name: str = "") -> str | None:
    """Why this mail is a bounce (or a delay warning), or None.

    A bounce is an RFC 3464 report, a mail with ``X-Failed-Recipients``, mail from a mail
    system's own address, or mail with a bounce's subject that comes from the null sender or
    says what mail delivery software says (:data:`BOUNCE_TEXT`). An auto-reply
    (``Auto-Submitted: auto-replied``, an out-of-office) is never taken for one by its subject,
    even with the null sender it should have; Exim's bounces, which also say ``auto-replied``,
    are told by their sender and ``X-Failed-Recipients``.
    """
    if (msg.get_content_type() == "multipart/report"
            and str(msg.get_param("report-type") or "").lower() == "delivery-status"):
        return "report (delivery-status)"
    if headers.get("x-failed-recipients"):
        return "bounce (X-Failed-Recipients)"
    if sender and bounce_sender(sender):
        return f"sent by {sender.rpartition('@')[0] or sender}"
    if any(v.split(";")[0].strip().lower() == "auto-replied"
           for v in headers.get("auto-submitted", [])):
        return None  # an out-of-office reply (Exim's bounces say auto-replied too, from above)
    if not BOUNCE_SUBJECT.search(subject) or _FORWARDED.match(subject):
        return None  # a person forwarding a bounce they got is a person
    if null_sender or not sender:
        return "bounce (null sender, a bounce's subject)"
    if _software_text(text):
        return "bounce (a bounce's subject and text)"
    if sender_name.strip().strip('"').lower() in BOUNCE_NAMES:
        return f"bounce (from {sender_name.strip()})"
    return None


def read_report(msg: Message, headers: Mapping[str, list[str]], text: str, *, sender: str,
                null_sender: bool, subject: str, sender_name: str = "") -> DeliveryReport | None:
    """The delivery report in a bounce, or None when the mail is not a bounce that names any
    message (an out-of-office reply, a list mail, a person's mail): see :func:`bounce_reason`.

    The mail it returns is named by a ``message/rfc822`` (or ``text/rfc822-headers``) part,
    whether the bounce is an RFC 3464 report or a plain ``multipart/mixed``; by an
    ``Original-Message-ID``; by the bounce's own In-Reply-To/References; or, in an older MTA's
    text bounce, by a quoted ``Message-ID:`` line.
    """
    if bounce_reason(msg, headers, text, sender=sender, null_sender=null_sender,
                     subject=subject, sender_name=sender_name) is None:
        return None

    failed_header = headers.get("x-failed-recipients", [])
    ids: list[str] = []
    blocks: list[Message] = []
    texts: list[str] = []
    for part in _walk(msg):
        kind = part.get_content_type()
        if kind in ("message/delivery-status", "message/global-delivery-status"):
            payload = part.get_payload()
            if isinstance(payload, list):
                blocks.extend(b for b in payload if isinstance(b, Message))
        else:
            returned = _returned_headers(part)
            if returned is not None:
                found = _ids(returned.get("message-id"))
                body = returned.get_payload()
                if not found and isinstance(body, str):
                    # A damaged copy whose headers end early (a stray blank line, folded lines
                    # that lost their indent): its Message-ID is in what follows.
                    found = _MESSAGE_ID_LINE.findall(body[:_MAX_SCAN])[:1]
                ids += found
            elif kind == "text/plain" and part.get_filename():
                texts.append(_decoded(part))  # "the original message" as a text file
    for block in blocks:
        ids += _ids(block.get("original-message-id"))
    for name in ("original-message-id", "in-reply-to", "references"):
        for value in headers.get(name, []):
            ids += _ids(value)
    if not ids:  # a plain text bounce quoting the original
        for quoted in (text, *texts):
            ids += _MESSAGE_ID_LINE.findall(quoted[:_MAX_QUOTED])
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
        failed = action.startswith("fail") or action == "error" or (
            action not in _NOT_FAILED and status.startswith("5"))
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
