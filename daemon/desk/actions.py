"""The root message's buttons and the ``/frontdesk`` slash command.

Buttons (CONTRACT.md "Slack desk"): ``frontdesk_claim`` and ``frontdesk_resolve`` (and
``frontdesk_reopen`` on a resolved conversation) are buttons whose ``value`` is the reference;
``frontdesk_snooze`` and ``frontdesk_priority`` are menus whose option values are the reference
followed by the choice (``"FD-12 4h"``, ``"FD-12 high"``); a bare reference snoozes for an hour or
raises the priority one step.

``/frontdesk SUBCOMMAND [REF] [ARGS]``: ``resolve FD-12``, ``reopen FD-12``, ``claim FD-12``,
``assign FD-12 @user`` (or ``me``, ``nobody``), ``snooze FD-12 2h`` (or ``morning``),
``priority FD-12 high``, ``show FD-12``, ``search TEXT``, ``reply-with FD-12 NAME``,
``resolve FD-12 what solved it`` (a resolution note), ``tag FD-12 refund -kettle``,
``similar FD-12``, ``saved-reply list|add NAME TEXT|remove NAME``, ``cc FD-12`` (who staff replies
copy) and ``cc FD-12 +carol@example.org -bob@example.org``; the answer is shown only to the
person who typed it. The Resolve button opens a small form asking what solved it (optional); the
message shortcut "Save as saved reply" (:data:`blocks.SAVE_REPLY_CALLBACK`) keeps a staff
message's text as a saved reply. ``log phone|in-person|letter`` opens a form
(:func:`blocks.log_modal`) whose submission records a contact taken by phone, in person or by
letter through the daemon's :class:`~frontdesk.channels.logged.intake.Intake`, with the Slack
user as the staff member who took it.

Every change goes through :mod:`frontdesk.domain.conversations` (the same functions as the
command line), is written to the events audit with the Slack user as actor, is said in the
conversation's thread, and refreshes the root message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from frontdesk.channels.logged.contact import LoggedContact, problems
from frontdesk.channels.logged.intake import Intake, IntakeError, IntakePending
from frontdesk.config.schema import CoreSettings, SlackConfig
from frontdesk.daemon.desk import blocks
from frontdesk.daemon.desk.api import CALL_ERRORS, SlackApi, SlackUser, describe
from frontdesk.daemon.desk.cards import RootCards
from frontdesk.daemon.desk.queue import SlackQueue
from frontdesk.domain import cc as cc_list
from frontdesk.domain.business_hours import BusinessCalendar
from frontdesk.domain.contacts import ContactError, find_contact
from frontdesk.domain.conversations import (
    PRIORITIES,
    CannotReply,
    InvalidAction,
    UnknownConversation,
    add_staff_reply,
    assign,
    get_conversation,
    messages_of,
    render_saved_reply,
    reopen,
    resolve,
    set_priority,
    set_tags,
    snooze,
    snooze_until,
)
from frontdesk.domain.privacy import change_contact, contact_tag_list, live_contact
from frontdesk.domain.replies import ReplyComposer
from frontdesk.domain.saved_replies import (
    SavedReplyError,
    add_saved_reply,
    find_saved_reply,
    remove_saved_reply,
    saved_replies,
)
from frontdesk.domain.search import InvalidQuery, marked, search_conversations
from frontdesk.domain.similar import SimilarConversations
from frontdesk.storage.attachments import AttachmentStore
from frontdesk.storage.db import Store
from frontdesk.storage.models import Contact

log = logging.getLogger(__name__)

USAGE = """*/frontdesk* — what it does:
• `show FD-12` — the conversation and its last messages
• `resolve FD-12` · `resolve FD-12 what solved it` · `reopen FD-12` · `claim FD-12`
• `assign FD-12 @someone` (or `me`, or `nobody`)
• `snooze FD-12 2h` (or `30m`, `1d`, `morning` for the next business morning)
• `priority FD-12 high` (low, normal, high, urgent)
• `search words` — earlier conversations that mention them
• `tag FD-12 refund kettle` (`-kettle` takes a tag off)
• `cc FD-12` — who replies copy · `cc FD-12 +carol@example.org -bob@example.org`
• `similar FD-12` — resolved conversations like it, with what solved them
• `reply-with FD-12 NAME` — send a saved reply
• `saved-reply list` · `saved-reply add NAME text` · `saved-reply remove NAME`
• `log phone` (or `in-person`, `letter`) — log a contact you took: opens a form
• `contact FD-12` — the customer's name, tags and addresses (or a contact id or address)
• `contact FD-12 tag vip lang:de` · `contact FD-12 untag vip` · `contact FD-12 name Ada`{saved}"""

_BUTTONS = {blocks.ACTION_CLAIM: "claim", blocks.ACTION_RESOLVE: "resolve",
            blocks.ACTION_REOPEN: "reopen", blocks.ACTION_SNOOZE: "snooze",
            blocks.ACTION_PRIORITY: "priority"}
_USER_MENTION = re.compile(r"^<@([A-Z0-9]+)(?:\|([^>]*))?>$")
_REFERENCE = re.compile(r"^FD-?[0-9]{1,18}$", re.IGNORECASE)
_NOBODY = frozenset({"nobody", "none", "-", "no-one", "noone"})
_LOG_CHANNELS = {"phone": "phone", "call": "phone", "in-person": "in_person",
                 "in_person": "in_person", "visit": "in_person", "letter": "letter"}
_LOG_WAIT = 2.0  # seconds: Slack wants a form's submission answered within three


def _id_of(field: Any) -> str:
    """A user or channel id from a payload's ``user``/``channel`` (an object with ``id``, or
    the id itself); "" for anything else."""
    if isinstance(field, dict):
        field = field.get("id")
    return field if isinstance(field, str) else ""


def _view_value(view: dict[str, Any], block: str) -> str:
    """The text a modal's input block ``block`` (action ``value``) was given; "" if none."""
    state = view.get("state")
    values = state.get("values") if isinstance(state, dict) else None
    field = values.get(block) if isinstance(values, dict) else None
    answer = field.get("value") if isinstance(field, dict) else None
    text = answer.get("value") if isinstance(answer, dict) else None
    return text if isinstance(text, str) else ""


def _cc_said(added: list[str], removed: list[str], now: list[str]) -> str:
    """A CC list (and what changed in it) in words, escaped for Slack."""
    listed = ", ".join(blocks.escape(a) for a in now) if now else "nobody"
    done = ([f"added {', '.join(blocks.escape(a) for a in added)}"] if added else []) + (
        [f"removed {', '.join(blocks.escape(a) for a in removed)}"] if removed else [])
    if not done:
        return f"CC: {listed}"
    return f"CC {'; '.join(done)} (now {listed})"


def _raise_priority(current: str) -> str:
    index = PRIORITIES.index(current) if current in PRIORITIES else 1
    return PRIORITIES[min(index + 1, len(PRIORITIES) - 1)]


class DeskParts(Protocol):
    """What the actions (and the events, :mod:`.events`) use of the desk service."""

    settings: CoreSettings
    config: SlackConfig
    store: Store
    clock: Callable[[], datetime]
    calendar: BusinessCalendar
    replies: ReplyComposer
    queue: SlackQueue
    api: SlackApi
    cards: RootCards
    intake: Intake | None
    similar: SimilarConversations
    known_channels: tuple[str, ...]
    """The customer channel names an address may start with (``telegram:12345``)."""
    attachments: AttachmentStore
    """Where staff files fetched from Slack are stored (and customers' files read from)."""

    def kick(self) -> None:
        """Wake the outbox worker and the root refresh after a commit that queued desk work or
        changed a conversation."""


class DeskActions:
    def __init__(self, desk: DeskParts) -> None:
        self.desk = desk

    # -- buttons ------------------------------------------------------------------------------

    async def on_action(self, body: dict[str, Any]) -> None:
        actions = body.get("actions")
        action = actions[0] if isinstance(actions, list) and actions else {}
        if not isinstance(action, dict):
            return
        kind = _BUTTONS.get(str(action.get("action_id")))
        selected = action.get("selected_option")
        value = action.get("value") or (selected.get("value") if isinstance(selected, dict)
                                         else "") or ""
        reference, _, choice = str(value).strip().partition(" ")
        user = await self.desk.api.users.get(_id_of(body.get("user")))
        if kind is None:
            return
        if kind == "resolve" and await self._ask_what_solved_it(reference, body):
            return
        ok, text = await self.change(kind, reference, choice.strip(), user)
        if not ok:
            await self._tell(body, user, f":warning: {text}")

    async def _ask_what_solved_it(self, reference: str, body: dict[str, Any]) -> bool:
        """Open the Resolve form (what solved it, optional); False when it cannot be opened (no
        trigger, Slack refused): then the click resolves at once, without a note."""
        trigger_id = str(body.get("trigger_id") or "")
        if not trigger_id or not _REFERENCE.match(reference.strip()):
            return False
        try:  # an unknown or resolved conversation: the click says so, no form
            async with self.desk.store.reader() as s:
                if (await get_conversation(s, reference)).status == "resolved":
                    return False
        except UnknownConversation:
            return False
        try:
            await self.desk.api.open_view(trigger_id, blocks.resolve_modal(reference.strip()))
        except CALL_ERRORS as exc:
            log.warning("views.open for the Resolve form failed (%s); resolving without a note",
                        describe(exc))
            return False
        return True

    async def resolve_submitted(self, body: dict[str, Any], view: dict[str, Any]) -> str:
        """The Resolve form sent: resolve with its note; what to show (a warning if it could
        not be resolved)."""
        note = _view_value(view, "note")
        user = await self.desk.api.users.get(_id_of(body.get("user")))
        ok, text = await self.change("resolve", str(view.get("private_metadata") or ""), note,
                                     user)
        return text if ok else f":warning: {text}"

    async def save_reply_shortcut(self, body: dict[str, Any]) -> None:
        """The message shortcut: a form to name the message's text as a saved reply."""
        message = body.get("message")
        text = str(message.get("text") or "") if isinstance(message, dict) else ""
        trigger_id = str(body.get("trigger_id") or "")
        if not trigger_id:
            return
        try:
            await self.desk.api.open_view(trigger_id, blocks.save_reply_modal(
                blocks.slack_to_plain(text)))
        except CALL_ERRORS as exc:
            log.warning("views.open for 'Save as saved reply' failed: %s", describe(exc))

    async def save_reply_submitted(self, body: dict[str, Any],
                                   view: dict[str, Any]) -> tuple[dict[str, str], str]:
        """The form sent: ({block: why}, "") to fix a field, or ({}, what to show)."""
        user = await self.desk.api.users.get(_id_of(body.get("user")))
        name, text = _view_value(view, "name"), _view_value(view, "text")
        try:
            async with self.desk.store.session() as s:
                new = await add_saved_reply(s, name, text, actor=user.actor, now=self.desk.clock())
        except SavedReplyError as exc:
            field = "name" if "name" in str(exc) else "text"
            return {field: str(exc)}, ""
        log.info("saved reply %s %s by %s", name.lower(), "saved" if new else "replaced",
                 user.actor)
        verb = "Saved" if new else "Replaced"
        return {}, (f"{verb} the saved reply `{blocks.escape(name.lower())}`; send it with "
                    f"`/frontdesk reply-with FD-12 {blocks.escape(name.lower())}`.")

    async def _tell(self, body: dict[str, Any], user: SlackUser, text: str) -> None:
        """A note only the clicking person sees (not a conversation post: not in the outbox)."""
        container = body.get("container")
        channel = _id_of(body.get("channel")) or (
            str(container.get("channel_id") or "") if isinstance(container, dict) else "")
        if channel:
            await self.desk.api.tell(channel, user.id, text)

    # -- state changes (buttons and the slash command) --------------------------------------------

    async def change(self, kind: str, reference: str, arg: str, user: SlackUser,
                     assignee: str | None = None) -> tuple[bool, str]:
        """Apply one action; (True, what happened) or (False, why not)."""
        desk = self.desk
        now = desk.clock()
        data = user.audit_data()
        changed = False
        solved: str | None = None
        try:
            async with desk.store.session() as s:
                c = await get_conversation(s, reference)
                if kind == "claim":
                    changed = await assign(s, c, user.name, actor=user.actor, now=now, data=data)
                    what = "Claimed"
                elif kind == "assign":
                    changed = await assign(s, c, assignee, actor=user.actor, now=now, data=data)
                    what = f"Assigned to {blocks.escape(assignee)}" if assignee else "Unassigned"
                elif kind == "resolve":
                    note = arg.strip() or None
                    changed = await resolve(s, c, actor=user.actor, now=now, data=data,
                                            note=note)
                    what = "Resolved"
                    solved = note
                elif kind == "tag":
                    words = [w.lower() for w in arg.split()]
                    changed = await set_tags(
                        s, c, add=[w for w in words if not w.startswith("-")],
                        remove=[w[1:] for w in words if w.startswith("-")],
                        actor=user.actor, now=now, data=data)
                    what = "Tags: " + (" ".join(f"`{blocks.escape(t)}`" for t in c.tags or [])
                                       or "none")
                elif kind == "cc":
                    words = arg.split()
                    added, taken = await cc_list.change_cc(
                        s, c, add=[w.removeprefix("+") for w in words if not w.startswith("-")],
                        remove=[w[1:] for w in words if w.startswith("-")],
                        actor=user.actor, now=now, data=data)
                    changed = bool(added or taken)
                    what = _cc_said(added, taken, cc_list.active(c.cc))
                elif kind == "reopen":
                    changed = await reopen(s, c, actor=user.actor, now=now, data=data)
                    what = "Reopened"
                elif kind == "snooze":
                    until = snooze_until(arg or "1h", now, desk.calendar)
                    changed = await snooze(s, c, until, actor=user.actor, now=now, data=data)
                    what = f"Snoozed until {blocks.slack_date(until)}"
                elif kind == "priority":
                    priority = (arg or _raise_priority(c.priority)).lower()
                    changed = await set_priority(s, c, priority, actor=user.actor, now=now,
                                                 data=data)
                    what = f"Priority set to {blocks.escape(priority)}"
                else:
                    return False, f"unknown action {kind!r}"
                if changed:
                    line = blocks.action_line(what, user.name)
                    if solved:
                        line += "\n" + blocks.solved_line(solved)
                    await desk.queue.text(s, c, line, now)
                reference, status = c.reference, c.status
        except (UnknownConversation, InvalidAction, cc_list.CcError) as exc:
            return False, blocks.escape(str(exc)) if kind == "cc" else str(exc)
        if changed and kind in ("resolve", "reopen"):
            desk.similar.changed()
        if not changed:
            if kind == "tag":
                return True, f"{reference} unchanged ({what.lower()})."
            if kind == "cc":
                return True, f"{reference} unchanged ({what})."
            return True, f"{reference} unchanged (it is {status})."
        desk.kick()
        log.info("%s: %s by %s", reference, what, user.actor)
        return True, f"{reference}: {what}."

    # -- /frontdesk ----------------------------------------------------------------------------

    async def on_command(self, command: dict[str, Any]) -> str:
        words = str(command.get("text") or "").split()
        user = await self.desk.api.users.get(str(command.get("user_id") or ""))
        if not words or words[0].lower() in ("help", "?", "-h", "--help"):
            return await self._usage()
        sub, rest = words[0].lower(), words[1:]
        if sub == "search":
            return await self.search(" ".join(rest))
        if sub == "log":
            return await self.open_log_form(rest, str(command.get("trigger_id") or ""))
        if sub == "contact":
            return await self.contact(rest, user)
        if sub in ("saved-reply", "saved_reply", "savedreply", "saved-replies"):
            typed = str(command.get("text") or "").strip().split(None, 1)
            return await self.saved_reply(typed[1] if len(typed) > 1 else "", user)
        if sub not in ("resolve", "reopen", "claim", "assign", "snooze", "priority", "show",
                       "reply-with", "reply_with", "replywith", "tag", "untag", "similar",
                       "cc"):
            return f"I don't know `{blocks.escape(sub)}`.\n{await self._usage()}"
        if not rest:
            return f"`{sub}` needs a conversation reference, like `{sub} FD-12`."
        reference, args = rest[0], rest[1:]
        if sub == "show":
            return await self.show(reference)
        if sub == "similar":
            return await self.similar(reference)
        if sub == "cc":
            return await self.cc(reference, args, user)
        if sub in ("tag", "untag"):
            if not args:
                return f"`{sub} {blocks.escape(reference)} TAG...` needs at least one tag."
            tags = args if sub == "tag" else [f"-{a.lstrip('-')}" for a in args]
            ok, text = await self.change("tag", reference, " ".join(tags), user)
            return text if ok else f":warning: {text}"
        if sub == "resolve" and args:  # the rest, as typed, is what solved it
            note = blocks.slack_to_plain(str(command.get("text") or "").strip().split(None, 2)[2])
            ok, text = await self.change("resolve", reference, note, user)
            return text if ok else f":warning: {text}"
        if sub in ("reply-with", "reply_with", "replywith"):
            if not args:
                return f"`reply-with {blocks.escape(reference)} NAME` needs the saved reply's " \
                       f"name.{await self._saved_names()}"
            return await self.reply_with(reference, args[0], user)
        if sub == "assign":
            if not args:
                return "`assign FD-12 @someone` needs someone (or `me`, or `nobody`)."
            assignee = await self._person(" ".join(args), user)
            ok, text = await self.change("assign", reference, "", user, assignee=assignee)
        elif sub == "snooze":
            ok, text = await self.change("snooze", reference, args[0] if args else "1h", user)
        elif sub == "priority":
            ok, text = await self.change("priority", reference, args[0] if args else "", user)
        else:
            ok, text = await self.change(sub, reference, "", user)
        return text if ok else f":warning: {text}"

    # -- /frontdesk log: a contact taken by phone, in person or by letter -------------------------

    async def open_log_form(self, args: list[str], trigger_id: str) -> str:
        """Open the form; "" when it is open (nothing more to say), else why not."""
        channel = _LOG_CHANNELS.get(args[0].lower()) if args else None
        if channel is None:
            return "`log` needs how the customer got in touch: `log phone`, `log in-person` " \
                   "or `log letter`."
        if self.desk.intake is None or not trigger_id:
            return ":warning: The form cannot be opened here; use `frontdesk log` instead."
        try:
            await self.desk.api.open_view(trigger_id, blocks.log_modal(channel))
        except CALL_ERRORS as exc:
            log.warning("views.open for /frontdesk log failed: %s", describe(exc))
            return f":warning: The form could not be opened ({blocks.escape(describe(exc))})."
        return ""

    async def log_submitted(self, body: dict[str, Any],
                            view: dict[str, Any]) -> tuple[dict[str, str], str]:
        """The form sent: ({block: why} for fields to fix, "") or ({}, what to show). The view's
        id is the contact's external id: the same form sent twice is logged once."""
        def value(block: str) -> str:
            return _view_value(view, block)

        user = await self.desk.api.users.get(_id_of(body.get("user")))
        try:
            item = LoggedContact.model_validate({
                "channel": str(view.get("private_metadata") or ""),
                "external_id": f"slack-{view.get('id') or ''}",
                "contact": {"name": value("name"), "email": value("email"),
                            "phone": value("phone")},
                "subject": value("subject"), "text": value("text"),
                "author": user.name[:200]})
        except ValidationError as exc:
            fields = {"name", "email", "phone", "subject", "text"}
            errors: dict[str, str] = {}
            for field, why in problems(exc).items():
                block = field if field in fields else "text"
                errors.setdefault(block, why if block == field else f"{field}: {why}")
            return errors, ""
        if self.desk.intake is None:
            return {"text": "logging contacts is not available in this daemon"}, ""
        try:
            reference, created = await self.desk.intake.record(item, timeout=_LOG_WAIT)
        except IntakePending:
            return {}, "Logged. It becomes a conversation in a moment; its thread follows here."
        except IntakeError as exc:
            return {}, f":warning: Logged, but {blocks.escape(str(exc))}"
        except Exception as exc:  # noqa: BLE001 - the store away: they may send it again
            log.warning("/frontdesk log: could not journal the contact: %s", exc)
            return {"text": "it could not be stored just now; please send it again"}, ""
        if not created:
            return {}, f"This form was logged already, as *{reference}*."
        return {}, f"Logged as *{reference}*; its thread follows here."

    async def _person(self, spec: str, me: SlackUser) -> str | None:
        spec = spec.strip()
        if spec.lower() in _NOBODY:
            return None
        if spec.lower() in ("me", "myself"):
            return me.name
        mention = _USER_MENTION.match(spec)
        if mention:
            return (await self.desk.api.users.get(mention.group(1))).name
        return spec.lstrip("@") or None

    async def _saved_names(self) -> str:
        async with self.desk.store.reader() as s:
            names = [r.name for r in await saved_replies(s, self.desk.settings.saved_replies)]
        if not names:
            return " No saved replies yet (`/frontdesk saved-reply add NAME text`)."
        return " Saved replies: " + ", ".join(f"`{blocks.escape(n)}`" for n in names) + "."

    async def _usage(self) -> str:
        return USAGE.format(saved=("\n" + (await self._saved_names()).strip()))

    async def show(self, reference: str) -> str:
        desk = self.desk
        try:
            async with desk.store.reader() as s:
                c = await get_conversation(s, reference)
                messages = await messages_of(s, c.id)
                card = await desk.cards.card(s, c.id)
        except UnknownConversation as exc:
            return f":warning: {exc}"
        ids = ", ".join(f"{ch} {blocks.escape(a)}" for ch, a in card.identities)
        lines = [
            f"*{c.reference}* · {blocks.cut(c.subject or '(no subject)', 200)}",
            f"Status *{c.status}* · priority {c.priority} · "
            f"assignee {blocks.escape(c.assignee) if c.assignee else 'nobody'} · "
            f"channel {c.channel}",
            f"Contact {blocks.cut(card.contact_name or '(no name)', 200)} ({ids})",
            f"SLA: {blocks.sla_line(card)}",
        ]
        if c.tags:
            lines.append("Tags: " + " ".join(f"`{blocks.escape(t)}`" for t in c.tags))
        if cc_list.active(c.cc):
            lines.append(_cc_said([], [], cc_list.active(c.cc)))
        if c.resolution_note:
            lines.append("What solved it: " + blocks.cut(" ".join(c.resolution_note.split()),
                                                         500))
        if messages:
            lines.append("Last messages:")
        for m in messages[-5:]:
            arrow = "←" if m.direction == "in" else "→"
            kind = " (note)" if m.is_note else f" [{m.delivery_status}]" \
                if m.delivery_status else ""
            who = blocks.cut(m.author_name or m.address or m.author, 100)
            lines.append(f"{arrow} *{who}*{kind} {blocks.slack_date(m.created_at)}: "
                         f"{blocks.cut(' '.join(m.text.split()), 300)}")
        return "\n".join(lines)

    async def cc(self, reference: str, args: list[str], user: SlackUser) -> str:
        """``cc FD-12``: who staff replies copy; ``cc FD-12 +carol@example.org -bob@example.org``
        changes it (an address Slack made a ``mailto:`` link is read as the address)."""
        if not args:
            try:
                async with self.desk.store.reader() as s:
                    c = await get_conversation(s, reference)
            except UnknownConversation as exc:
                return f":warning: {exc}"
            return f"{c.reference}: {_cc_said([], [], cc_list.active(c.cc))}."
        words = [blocks.slack_to_plain(a) for a in args]
        ok, text = await self.change("cc", reference, " ".join(words), user)
        return text if ok else f":warning: {text}"

    async def contact(self, args: list[str], user: SlackUser) -> str:
        """``contact WHO [tag TAG...|untag TAG...|name NAME]``: WHO is a conversation (its
        customer), a contact id or an address. Tags drive SLA policies and routes from the
        contact's next conversation."""
        if not args:
            return "`contact FD-12` needs a conversation, a contact id or an address."
        who, verb, values = args[0], (args[1].lower() if len(args) > 1 else ""), args[2:]
        if verb not in ("", "tag", "untag", "name"):
            return f"`contact {blocks.escape(who)}` then `tag`, `untag` or `name`, not " \
                   f"`{blocks.escape(verb)}`."
        if verb and not values:
            return f"`contact {blocks.escape(who)} {verb}` needs what to set."
        desk = self.desk
        try:
            async with desk.store.session() as s:
                contact = await self._contact_of(s, who)
                changed = False
                if verb:
                    changed = await change_contact(
                        s, contact, add=values if verb == "tag" else (),
                        remove=values if verb == "untag" else (),
                        name=" ".join(values) if verb == "name" else None,
                        actor=user.actor, now=desk.clock())
                await s.refresh(contact, attribute_names=["identities"])
                addresses = ", ".join(f"{i.channel} {blocks.escape(i.address)}"
                                      for i in contact.identities) or "no address"
                tags = " ".join(f"`{t}`" for t in contact_tag_list(contact)) or "no tags"
                name = blocks.cut(contact.name or "(no name)", 200)
        except (ContactError, UnknownConversation) as exc:
            return f":warning: {blocks.escape(str(exc))}"
        done = " (changed)" if changed else " (unchanged)" if verb else ""
        return f"Contact {contact.id}{done}: *{name}* · {tags} · {addresses}"

    async def _contact_of(self, s: Any, who: str) -> Contact:
        """The contact of a conversation reference, else of a contact id or an address."""
        if _REFERENCE.match(who):
            conversation = await get_conversation(s, who)
            contact = await s.get(Contact, conversation.contact_id)
        else:
            contact = await find_contact(s, who, known=self.desk.known_channels)
        if contact is None:
            raise ContactError(f"no contact for {who}")
        return await live_contact(s, contact)

    async def search(self, query: str) -> str:
        try:
            async with self.desk.store.reader() as s:
                hits = await search_conversations(s, query, limit=10)
        except InvalidQuery as exc:
            return f":warning: {exc}: `/frontdesk search refund broken`"
        if not hits:
            return f"No conversation mentions “{blocks.cut(query, 200)}”."
        lines = [f"Conversations that mention “{blocks.cut(query, 200)}”:"]
        for h in hits:
            snippet = marked(blocks.escape(h.snippet), "*", "*")
            lines.append(f"• *{h.reference}* ({h.status}, {h.channel}) "
                         f"{blocks.cut(h.subject or '(no subject)', 120)} — {snippet[:400]}")
        return "\n".join(lines)

    async def similar(self, reference: str) -> str:
        try:
            async with self.desk.store.reader() as s:
                c = await get_conversation(s, reference)
                hits = await self.desk.similar.similar_to(s, c, limit=3)
                links = await self.desk.cards.links(s, [h.conversation_id for h in hits])
        except UnknownConversation as exc:
            return f":warning: {exc}"
        if not hits:
            return f"No resolved conversation is like {c.reference} yet."
        lines = [f"Resolved conversations like {c.reference}:"]
        lines += [blocks.similar_line(h.reference, h.subject, h.resolution_note,
                                      links.get(h.conversation_id)) for h in hits]
        return "\n".join(lines)

    async def saved_reply(self, text: str, user: SlackUser) -> str:
        """``saved-reply list``, ``saved-reply add NAME text...``, ``saved-reply remove NAME``."""
        verb, _, rest = text.strip().partition(" ")
        verb = verb.lower() or "list"
        desk = self.desk
        if verb == "list":
            async with desk.store.reader() as s:
                replies = await saved_replies(s, desk.settings.saved_replies)
            if not replies:
                return "No saved replies yet (`/frontdesk saved-reply add NAME text`)."
            return "\n".join(["Saved replies:"] + [
                f"• `{blocks.escape(r.name)}` ({r.source}): "
                f"{blocks.cut(' '.join(r.text.split()), 200)}" for r in replies])
        name, _, body = rest.strip().partition(" ")
        if verb not in ("add", "remove") or not name or (verb == "add" and not body.strip()):
            return "`saved-reply list`, `saved-reply add NAME text` or `saved-reply remove NAME`."
        try:
            async with desk.store.session() as s:
                if verb == "add":
                    new = await add_saved_reply(s, name, blocks.slack_to_plain(body),
                                                actor=user.actor, now=desk.clock())
                else:
                    await remove_saved_reply(s, name, actor=user.actor, now=desk.clock(),
                                             config=desk.settings.saved_replies)
        except SavedReplyError as exc:
            return f":warning: {blocks.escape(str(exc))}"
        if verb == "remove":
            return f"Removed the saved reply `{blocks.escape(name.lower())}`."
        return f"{'Saved' if new else 'Replaced'} the saved reply `{blocks.escape(name.lower())}`."

    async def reply_with(self, reference: str, name: str, user: SlackUser) -> str:
        desk = self.desk
        if not desk.config.replies_enabled:
            return ":warning: Replies are off on this desk (`slack.replies_enabled = false`)."
        async with desk.store.reader() as s:
            template = await find_saved_reply(s, desk.settings.saved_replies, name)
        if template is None:
            return f":warning: There is no saved reply called `{blocks.escape(name)}`." \
                   + await self._saved_names()
        now = desk.clock()
        try:
            async with desk.store.session() as s:
                c = await get_conversation(s, reference)
                text = render_saved_reply(template, c, agent=user.name)
                reply = await add_staff_reply(
                    s, c, text, author=user.name[:256], replies=desk.replies, now=now,
                    actor=user.actor,
                    event_data=user.audit_data(saved_reply=name.lower()))
                reference = c.reference
        except (UnknownConversation, InvalidAction, CannotReply) as exc:
            return f":warning: {exc}"
        desk.kick()
        log.info("%s: saved reply %s queued as #%d by %s", reference, name, reply.id, user.actor)
        return (f"Queued the saved reply `{blocks.escape(name.lower())}` to {reference}; it "
                f"shows in the thread once it is sent:\n{blocks.quote(text, 2500)}")
