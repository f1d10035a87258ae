"""What the Slack desk posts: the root card of a conversation and the lines in its thread.

Pure functions, no I/O. Customer text is escaped for Slack (``&``, ``<``, ``>``, so a customer
cannot ping ``<!channel>`` or forge a link) and cut on a character boundary, never inside an
escape, to Slack's limits (3,000 characters for a section, 150 for a header); what Slack
people type is turned back into plain text before it goes to a customer (:func:`slack_to_plain`).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from frontdesk.domain.files import file_words, size_words

SECTION_LIMIT = 3000
HEADER_LIMIT = 150
FIELD_LIMIT = 2000
THREAD_TEXT_LIMIT = 3500
FALLBACK_LIMIT = 300

ACTION_CLAIM = "frontdesk_claim"
ACTION_RESOLVE = "frontdesk_resolve"
ACTION_REOPEN = "frontdesk_reopen"
ACTION_SNOOZE = "frontdesk_snooze"
ACTION_PRIORITY = "frontdesk_priority"
RESOLVE_CALLBACK = "frontdesk_resolve_note"
"""The ``callback_id`` of the form the Resolve button opens (what solved it)."""
SAVE_REPLY_CALLBACK = "frontdesk_save_reply"
"""The ``callback_id`` of the message shortcut "Save as saved reply" (set it in the Slack app's
Interactivity & Shortcuts page) and of the form it opens."""

SNOOZE_CHOICES = (("1h", "1 hour"), ("4h", "4 hours"), ("morning", "Next business morning"))
PRIORITY_CHOICES = (("low", "Low"), ("normal", "Normal"), ("high", "High"),
                    ("urgent", "Urgent"))

_STATUS = {
    "open": ":large_green_circle: Open",
    "pending": ":hourglass_flowing_sand: Waiting for the customer",
    "snoozed": ":zzz: Snoozed",
    "resolved": ":white_check_mark: Resolved",
}
_PRIORITY = {"low": "Low", "normal": "Normal", "high": ":small_orange_diamond: High",
             "urgent": ":red_circle: Urgent"}
_CHANNEL = {"email": "Email", "sms": "SMS", "whatsapp": "WhatsApp", "voice": "Voicemail",
            "telegram": "Telegram", "web": "Website chat", "form": "Contact form",
            "messenger": "Messenger", "instagram": "Instagram", "phone": "Phone call",
            "in_person": "In person", "letter": "Letter"}
_CUT_NOTE = " … (cut; the whole message is in `frontdesk show {ref}`)"


def _channel_name(channel: str) -> str:
    """A customer channel as people call it (``sms`` → ``SMS``)."""
    return _CHANNEL.get(channel, channel)


def escape(text: str) -> str:
    """Slack's three control characters as entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escaped_len(ch: str) -> int:
    return 5 if ch == "&" else 4 if ch in "<>" else 1


def cut(text: str, limit: int, note: str = " …") -> str:
    """``text`` escaped and no longer than ``limit``: cut between characters (never inside an
    ``&amp;``) with ``note`` appended when something was left out."""
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    room = max(0, limit - len(note))
    used = end = 0
    for ch in text:
        size = _escaped_len(ch)
        if used + size > room:
            break
        used += size
        end += 1
    return escape(text[:end]).rstrip() + note


def quote(text: str, limit: int, note: str = " …") -> str:
    """``text`` as a Slack block quote (``>`` on every line), escaped and cut to ``limit``."""
    lines = _tidy_lines(text)
    if not lines:
        return ">_(no text)_"
    full = "\n".join(">" + escape(line) for line in lines)
    if len(full) <= limit:
        return full
    room = limit - len(note)
    out: list[str] = []
    for line in lines:
        used = len("\n".join(out))
        budget = room - used - (2 if out else 1)  # the line break and the ">"
        if budget <= 0:
            break
        piece = cut(line, budget, note="")
        out.append(">" + piece)
        if len(piece) < len(escape(line)):
            break
    return "\n".join(out) + note


def _tidy_lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    tidy: list[str] = []
    for line in lines:  # at most one blank line in a row
        if line or (tidy and tidy[-1]):
            tidy.append(line)
    while tidy and not tidy[-1]:
        tidy.pop()
    return tidy


_MENTION = re.compile(r"<([@#!])([^>|]*)(?:\|([^>]*))?>")
_LINK = re.compile(r"<((?:https?|mailto|tel):[^>|]+)(?:\|([^>]*))?>")


def slack_to_plain(text: str, names: dict[str, str] | None = None) -> str:
    """What a staff member typed in Slack, as plain text for the customer.

    Links ``<https://x|label>`` become ``label (https://x)`` (or the URL alone),
    ``<mailto:a@b|a@b>`` the address, ``<@U123>`` the person's name when known, ``<!here>``
    "@here"; entities are decoded.
    """
    names = names or {}

    def link(m: re.Match[str]) -> str:
        target, label = m.group(1), m.group(2)
        shown = target.split(":", 1)[1] if target.startswith(("mailto:", "tel:")) else target
        if not label or label in (shown, target):
            return shown
        return f"{label} ({shown})"

    def mention(m: re.Match[str]) -> str:
        sigil, ident, label = m.group(1), m.group(2), m.group(3)
        if sigil == "@":
            return "@" + (label or names.get(ident) or ident)
        if sigil == "#":
            return "#" + (label or ident)
        return "@" + (label or ident.split("^")[0])

    text = _LINK.sub(link, text)
    text = _MENTION.sub(mention, text)
    return html.unescape(text).strip()


def slack_date(at: datetime, fallback: str | None = None) -> str:
    """A time Slack shows in each reader's own time zone."""
    epoch = int(at.timestamp())
    shown = fallback or at.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{epoch}^{{date_short_pretty}} at {{time}}|{shown}>"


@dataclass(frozen=True)
class Card:
    """Everything the root message of a conversation shows."""

    conversation_id: int
    reference: str
    channel: str
    subject: str
    status: str
    priority: str
    assignee: str | None
    created_at: datetime
    first_response_due_at: datetime | None
    first_responded_at: datetime | None
    snoozed_until: datetime | None
    escalation_level: int
    contact_name: str
    identities: tuple[tuple[str, str], ...]
    earlier: int
    last_earlier: tuple[str, str, str] | None
    """(reference, status, subject) of the contact's previous conversation."""
    first_text: str
    first_automated: str | None = None
    attachments: tuple[str, ...] = ()
    inbox_address: str | None = None
    replies_enabled: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    resolution_note: str | None = None
    similar: tuple[tuple[str, str, str | None, str | None], ...] = ()
    """Resolved conversations like this one: (reference, subject, resolution note, link to
    its thread or None), best first."""
    cc: tuple[str, ...] = ()
    """Addresses staff replies copy (reply-all)."""


def _button(text: str, action_id: str, value: str, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {"type": "button", "action_id": action_id, "value": value,
                              "text": {"type": "plain_text", "text": text}}
    if style:
        button["style"] = style
    return button


def _select(placeholder: str, action_id: str, reference: str,
            choices: tuple[tuple[str, str], ...], initial: str | None = None) -> dict[str, Any]:
    options = [{"text": {"type": "plain_text", "text": label}, "value": f"{reference} {value}"}
               for value, label in choices]
    select: dict[str, Any] = {"type": "static_select", "action_id": action_id,
                              "placeholder": {"type": "plain_text", "text": placeholder},
                              "options": options}
    for option in options:
        if initial is not None and option["value"] == f"{reference} {initial}":
            select["initial_option"] = option
    return select


def sla_line(card: Card) -> str:
    if card.first_responded_at is not None:
        return f"answered {slack_date(card.first_responded_at)}"
    if card.first_response_due_at is None:
        return "no SLA (automated message)"
    line = f"first response due {slack_date(card.first_response_due_at)}"
    if card.escalation_level:
        line += f" · :rotating_light: escalation level {card.escalation_level}"
    return line


def _status_line(card: Card) -> str:
    status = _STATUS.get(card.status, escape(card.status))
    if card.status == "snoozed" and card.snoozed_until is not None:
        status += f" until {slack_date(card.snoozed_until)}"
    return status


def _history_line(card: Card) -> str:
    if not card.earlier:
        return "first conversation with this contact"
    plural = "s" if card.earlier != 1 else ""
    line = f"{card.earlier} earlier conversation{plural}"
    if card.last_earlier is not None:
        ref, status, subject = card.last_earlier
        line += f"; the last, {ref} ({cut(subject, 80) or 'no subject'}), is {escape(status)}"
    return line


def root_message(card: Card) -> tuple[str, list[dict[str, Any]]]:
    """The fallback text and the blocks of a conversation's root message."""
    ref = card.reference
    who = card.contact_name or (card.identities[0][1] if card.identities else "unknown")
    channel = _channel_name(card.channel)
    subject = card.subject.strip() or "(no subject)"
    text = cut(f"{ref} · {who} ({channel}): {subject}", FALLBACK_LIMIT)
    header = f"{ref} · {subject}"
    if len(header) > HEADER_LIMIT:
        header = header[:HEADER_LIMIT - 1].rstrip() + "…"
    ids = ", ".join(f"{_channel_name(c)} {escape(a)}" for c, a in card.identities)
    fields = [
        f"*Status*\n{_status_line(card)}",
        f"*Priority*\n{_PRIORITY.get(card.priority, escape(card.priority))}",
        f"*Assignee*\n{escape(card.assignee) if card.assignee else '_nobody yet_'}",
        f"*SLA*\n{sla_line(card)}",
        f"*Contact*\n{cut(who, 200)}" + (f"\n{cut(ids, FIELD_LIMIT - 250)}" if ids else ""),
        f"*Channel*\n{channel}" + (f" to {escape(card.inbox_address)}"
                                    if card.inbox_address else ""),
    ]
    body = quote(card.first_text, SECTION_LIMIT, note=_CUT_NOTE.format(ref=ref))
    context = [_history_line(card), f"received {slack_date(card.created_at)}"]
    if card.first_automated:
        context.append(f":robot_face: automated ({escape(card.first_automated)})")
    if card.attachments:
        context.append(":paperclip: " + cut(", ".join(card.attachments), 500))
    if not card.replies_enabled:
        context.append("alerts only: replies here are not sent to the customer")
    if card.tags:
        context.append(":label: " + cut(" ".join(card.tags), 500))
    if card.cc:
        context.append("CC: " + cut(", ".join(card.cc), 1000))
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f[:FIELD_LIMIT]}
                                       for f in fields]},
        {"type": "section", "text": {"type": "mrkdwn", "text": body}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": c[:FIELD_LIMIT]}
                                         for c in context]},
        *_knowledge(card),
        {"type": "actions", "block_id": f"frontdesk_actions:{ref}", "elements": [
            _button("Claim", ACTION_CLAIM, ref),
            _button("Reopen", ACTION_REOPEN, ref) if card.status == "resolved"
            else _button("Resolve", ACTION_RESOLVE, ref, style="primary"),
            _select("Snooze", ACTION_SNOOZE, ref, SNOOZE_CHOICES),
            _select("Priority", ACTION_PRIORITY, ref, PRIORITY_CHOICES, initial=card.priority),
        ]},
    ]
    return text, blocks


def _knowledge(card: Card) -> list[dict[str, Any]]:
    """What the team knows about this conversation: what solved it once resolved, else the
    resolved conversations like it."""
    if card.status == "resolved" and card.resolution_note:
        return [{"type": "section", "text": {"type": "mrkdwn",
                                             "text": solved_line(card.resolution_note)}}]
    if card.status == "resolved" or not card.similar:
        return []
    lines = ["*Solved before* (similar resolved conversations):"]
    lines += [similar_line(*s) for s in card.similar]
    return [{"type": "section", "text": {"type": "mrkdwn",
                                         "text": cut_lines(lines, SECTION_LIMIT)}}]


def cut_lines(lines: list[str], limit: int) -> str:
    """Whole lines up to ``limit`` characters."""
    out: list[str] = []
    size = 0
    for line in lines:
        if size + len(line) + 1 > limit:
            break
        out.append(line)
        size += len(line) + 1
    return "\n".join(out)


def fingerprint(text: str, blocks: list[dict[str, Any]]) -> str:
    """A hash of what a root message shows, to skip a chat.update that would change nothing."""
    data = json.dumps([text, blocks], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()


def customer_line(name: str, channel: str, text: str, *, reference: str,
                  automated: str | None = None, attachments: tuple[str, ...] = ()) -> str:
    """A later customer message, for the thread."""
    head = f":speech_balloon: *{cut(name, 200)}* ({_channel_name(channel)})"
    if automated:
        head += f" · :robot_face: automated ({escape(automated)})"
    tail = ""
    if attachments:
        tail = "\n:paperclip: " + cut(", ".join(attachments), 400)
    room = THREAD_TEXT_LIMIT - len(head) - len(tail) - 1
    return f"{head}\n{quote(text, room, note=_CUT_NOTE.format(ref=reference))}{tail}"


def outbound_line(author: str, kind: str, channel: str, text: str, *, reference: str,
                  address: str, attachments: tuple[str, ...] = ()) -> str:
    """A message frontdesk sent to the customer that was not typed in this thread (a reply from
    the command line or a saved reply; an acknowledgement or other automatic message), once it
    was sent; ``attachments``: the names of the files it carried."""
    where = f"{_channel_name(channel)} to {escape(address)}" if address else \
        _channel_name(channel)
    if kind == "system":
        head = f":envelope_with_arrow: Automatic message sent ({where})"
    else:
        head = f":outbox_tray: *{cut(author or 'Staff', 200)}* replied ({where})"
    tail = "\n:paperclip: " + cut(", ".join(attachments), 400) if attachments else ""
    room = THREAD_TEXT_LIMIT - len(head) - len(tail) - 1
    return f"{head}\n{quote(text, room, note=_CUT_NOTE.format(ref=reference))}{tail}"


def file_name(name: str, size: int, cap: int) -> str:
    """A customer's file as a card or thread line names it: a file too large to be uploaded
    into the thread (over ``slack.upload_max``) with its size, since it is not shown there."""
    if size <= cap:
        return name
    return f"{name} ({size_words(size)}, too large to upload here)"


def files_not_uploaded(files: list[tuple[str, int]], cap: int) -> str:
    """Files of a customer message too large to upload into the thread (fetched after its line
    was posted, so it could not name them)."""
    names = ", ".join(file_words(f) for f in files)
    return (f":paperclip: {cut(names, 2000)}: too large to upload here (over the "
            f"{size_words(cap)} of slack.upload_max); `frontdesk show` lists them")


def failure_line(reason: str, *, address: str, channel: str, author: str = "",
                 text: str = "", reference: str = "", what: str = "reply") -> str:
    """A reply (or an automatic message) that could not be delivered, said plainly."""
    to = f"{escape(address)} ({_channel_name(channel)})" if address else \
        _channel_name(channel)
    who = f"The {what} by *{cut(author, 200)}*" if author else f"The {what}"
    line = f":warning: {who} could not be delivered to {to}: {cut(reason, 1500)}"
    if text:
        line += "\n" + quote(text, 1200, note=_CUT_NOTE.format(ref=reference))
    return line


def held_line(reason: str, *, address: str, channel: str, author: str = "") -> str:
    """A reply that waits for the customer (their messaging window is closed; a template asking
    them to write went out): it goes the moment they answer."""
    to = f"{escape(address)} ({_channel_name(channel)})" if address else \
        _channel_name(channel)
    who = f"The reply by *{cut(author, 200)}*" if author else "The reply"
    return (f":hourglass_flowing_sand: {who} to {to} is waiting: {cut(reason, 1500)}. It goes "
            "out as soon as they write again.")


def action_line(what: str, actor: str) -> str:
    return f":information_source: {what} by *{cut(actor, 200)}*"


def solved_line(note: str) -> str:
    """A resolution note, for the thread."""
    return ":bulb: *What solved it:*\n" + quote(note, 2500)


def similar_line(reference: str, subject: str, note: str | None, link: str | None) -> str:
    """One similar resolved conversation: its reference (a link to its thread when it has one),
    subject and what solved it."""
    ref = f"<{link}|{reference}>" if link else f"*{reference}*"
    solved = cut(" ".join(note.split()), 300) if note else "_no resolution note_"
    return f"• {ref} {cut(subject or '(no subject)', 120)}: {solved}"


def resolve_modal(reference: str) -> dict[str, Any]:
    """The Resolve button's form: what solved it, optional (``private_metadata``: the
    reference)."""
    return {"type": "modal", "callback_id": RESOLVE_CALLBACK, "private_metadata": reference,
            "title": {"type": "plain_text", "text": f"Resolve {reference}"[:24]},
            "submit": {"type": "plain_text", "text": "Resolve"},
            "close": {"type": "plain_text", "text": "Cancel"},
            "blocks": [{"type": "input", "block_id": "note", "optional": True,
                        "label": {"type": "plain_text", "text": "What solved it?"},
                        "hint": {"type": "plain_text", "text": "Kept with the conversation and "
                                 "shown when a similar one comes in."},
                        "element": {"type": "plain_text_input", "action_id": "value",
                                    "multiline": True, "max_length": 3000}}]}


def save_reply_modal(text: str) -> dict[str, Any]:
    """The form of the shortcut "Save as saved reply": a name, and the text to keep."""
    element: dict[str, Any] = {"type": "plain_text_input", "action_id": "value",
                               "multiline": True, "max_length": 3000}
    if text.strip():
        element["initial_value"] = text.strip()[:3000]
    return {"type": "modal", "callback_id": SAVE_REPLY_CALLBACK,
            "title": {"type": "plain_text", "text": "Save as saved reply"},
            "submit": {"type": "plain_text", "text": "Save"},
            "close": {"type": "plain_text", "text": "Cancel"},
            "blocks": [
                {"type": "input", "block_id": "name",
                 "label": {"type": "plain_text", "text": "Name"},
                 "hint": {"type": "plain_text", "text": "Letters, digits, - and _; send it with "
                          "/frontdesk reply-with FD-12 NAME"},
                 "element": {"type": "plain_text_input", "action_id": "value",
                             "max_length": 64}},
                {"type": "input", "block_id": "text",
                 "label": {"type": "plain_text", "text": "Reply"},
                 "hint": {"type": "plain_text", "text": "{name}, {first_name}, {reference}, "
                          "{subject} and {agent} are filled in when it is sent"},
                 "element": element}]}


def done_modal(title: str, text: str) -> dict[str, Any]:
    """What a form shows once it is sent (``text`` is mrkdwn)."""
    return {"type": "modal", "title": {"type": "plain_text", "text": title[:24]},
            "close": {"type": "plain_text", "text": "Done"},
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


def callback_line(actor: str) -> str:
    """A staff reply that nothing can carry to the customer (a logged contact without an email
    address or phone number): kept as a note; someone must call them back."""
    return (f":telephone_receiver: Not sent: there is no email address or phone number for this "
            f"customer. The reply by *{cut(actor, 200)}* is kept as an internal note: the "
            "customer must be called back.")


LOG_CALLBACK = "frontdesk_log"
"""The ``callback_id`` of the form ``/frontdesk log`` opens."""
LOG_TITLES = {"phone": "Log a phone call", "in_person": "Log a visit", "letter": "Log a letter"}
_LOG_FIELDS = (("name", "Name", False, 200), ("email", "Email", False, 254),
               ("phone", "Phone (with country code)", False, 40),
               ("subject", "Subject", False, 200), ("text", "What they said or wrote", True, 3000))


def log_modal(channel: str) -> dict[str, Any]:
    """The form of ``/frontdesk log phone|in-person|letter`` (a modal; ``private_metadata`` is
    the channel). Every field is a block whose ``block_id`` is the field's name."""
    inputs = []
    for name, label, required, limit in _LOG_FIELDS:
        element: dict[str, Any] = {"type": "plain_text_input", "action_id": "value",
                                   "max_length": limit}
        if name == "text":
            element["multiline"] = True
        inputs.append({"type": "input", "block_id": name, "optional": not required,
                       "label": {"type": "plain_text", "text": label}, "element": element})
    return {"type": "modal", "callback_id": LOG_CALLBACK, "private_metadata": channel,
            "title": {"type": "plain_text", "text": LOG_TITLES.get(channel, "Log a contact")},
            "submit": {"type": "plain_text", "text": "Log"},
            "close": {"type": "plain_text", "text": "Cancel"}, "blocks": inputs}


def logged_modal(text: str) -> dict[str, Any]:
    """What the log form shows once it is sent (``text`` is mrkdwn)."""
    return done_modal("Contact logged", text)
