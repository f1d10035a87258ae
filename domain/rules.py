"""Rules that pick conversations by what they are: Slack routes (``[[slack.routes]]``) and tag
rules (``[[tag_rules]]``) share one grammar.

A rule names conditions; every condition it names must match, and a list matches when any of its
items does: ``customer_channels`` (the conversation's channel), ``inbox_addresses`` (the address
the customer wrote to, a ``+tag`` ignored), ``keywords`` (whole words in the subject or the first
message, any case) and ``contact_tags`` (the contact's tags).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


class Conditions(Protocol):
    @property
    def customer_channels(self) -> Sequence[str]: ...
    @property
    def inbox_addresses(self) -> Sequence[str]: ...
    @property
    def keywords(self) -> Sequence[str]: ...
    @property
    def contact_tags(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class Subject:
    """What the rules look at in a new conversation."""

    channel: str
    inbox_address: str | None
    text: str
    """The subject and the first message's text."""
    contact_tags: Collection[str]

    def matches(self, rule: Conditions) -> bool:
        if rule.customer_channels and self.channel not in rule.customer_channels:
            return False
        if rule.inbox_addresses:
            inbox = (self.inbox_address or "").lower()
            base = re.sub(r"\+[^@]*@", "@", inbox)
            wanted = {a.lower() for a in rule.inbox_addresses}
            if inbox not in wanted and base not in wanted:
                return False
        if rule.keywords:
            lowered = self.text.lower()
            if not any(_has_keyword(k, lowered) for k in rule.keywords):
                return False
        if rule.contact_tags:
            tags = {t.lower() for t in self.contact_tags}
            if not tags & {t.lower() for t in rule.contact_tags}:
                return False
        return True


def _has_keyword(keyword: str, text: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(keyword.lower()) + r"(?!\w)", text) is not None


class TagRule(Conditions, Protocol):
    @property
    def tags(self) -> Sequence[str]: ...


def rule_tags(rules: Iterable[TagRule], subject: Subject) -> list[str]:
    """The tags every matching rule gives (all of them, not the first rule only), sorted."""
    return sorted({t for r in rules if subject.matches(r) for t in r.tags})
