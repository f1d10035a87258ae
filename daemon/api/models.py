"""The REST API's request and response bodies, declared once: requests are validated with these
models and ``/api/openapi.json`` is generated from them (:mod:`.spec`).

Responses are the store's JSON views (the ``show --json`` object, the ``report --json`` object);
their models name every field those views have and allow more, so a field added to a view later
is no breaking change.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_TEXT_LIMIT = 100_000
_NAME_LIMIT = 256


class Open(BaseModel):
    """A response object: the fields below, and possibly more added later."""

    model_config = ConfigDict(extra="allow")


class Strict(BaseModel):
    """A request body: the fields below and no others."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# --- responses ----------------------------------------------------------------------------------

class ErrorOut(Open):
    error: str = Field(description="What went wrong, in words")


class IdentityOut(Open):
    channel: str
    address: str


class ContactRef(Open):
    id: int
    name: str
    identities: list[IdentityOut]


class ConversationSummary(Open):
    id: int
    reference: str = Field(description='"FD-12"')
    status: str = Field(description="open, pending, snoozed or resolved")
    channel: str
    subject: str
    priority: str
    assignee: str | None
    created_at: str | None
    updated_at: str | None
    first_response_due_at: str | None
    first_responded_at: str | None
    resolved_at: str | None
    escalation_level: int
    inbox_address: str | None
    contact: ContactRef
    next_response_due_at: str | None
    resolution_due_at: str | None
    escalation_due_at: str | None
    acknowledgement_due_at: str | None
    sla_policy: str | None
    sla_paused: bool
    sla_paused_seconds_left: dict[str, int]
    survey_due_at: str | None
    survey_sent_at: str | None
    rating: int | None
    rated_at: str | None
    reminder_due_at: str | None
    snoozed_until: str | None
    cc: list[str] = Field(default_factory=list,
                          description="Addresses staff replies copy (email reply-all)")


class AttachmentOut(Open):
    filename: str
    content_type: str
    size: int
    sha256: str | None


class MessageOut(Open):
    id: int
    direction: Literal["in", "out"]
    author: str = Field(description="customer, staff or system")
    author_name: str
    channel: str
    address: str
    subject: str
    text: str
    text_new: str
    created_at: str | None
    delivery_status: str | None
    automated: bool
    note: bool
    external_id: str | None
    sent_at: str | None
    attachments: list[AttachmentOut]
    failure_reason: str | None = None
    waiting_reason: str | None = None


class ConversationDetail(ConversationSummary):
    messages: list[MessageOut]
    other_conversations: list[dict[str, Any]] = Field(default_factory=list)


class ConversationPage(Open):
    items: list[ConversationSummary]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at "
                                                "the end")


class ContactOut(Open):
    id: int
    name: str
    tags: list[str]
    identities: list[IdentityOut]
    conversations: list[dict[str, Any]]


class InboundOut(Open):
    reference: str | None = Field(description='"FD-12"; null while it is being made (202)')


class ReportGroup(Open):
    key: str | None = Field(description="The channel, tag or assignee; null: no tag / nobody")


class ReportOut(Open):
    since: str | None
    until: str | None
    overall: dict[str, Any]
    channels: dict[str, Any] | None = Field(default=None, description="Without ?by")
    by: Literal["channel", "tag", "agent"] | None = None
    groups: list[ReportGroup] | None = Field(
        default=None, description="With ?by: one entry per key, the biggest first (a "
                                  "conversation with two tags counts in both)")
    filters: dict[str, str] | None = None


class ExportOut(Open):
    contact: dict[str, Any]


# --- requests -----------------------------------------------------------------------------------

class FileIn(Strict):
    filename: str = Field(min_length=1, max_length=_NAME_LIMIT, description='"label.pdf"')
    content_type: str = Field(default="", max_length=_NAME_LIMIT,
                              description='"application/pdf"; empty: from the file name')
    content_base64: str = Field(min_length=1, description="The file's bytes in base64 "
                                                          "(the whole body is held to "
                                                          "api.max_body)")


class ReplyIn(Strict):
    text: str = Field(default="", max_length=_TEXT_LIMIT,
                      description="The reply, sent on the customer's channel (may be left out "
                                  "when it sends files)")
    author: str = Field(min_length=1, max_length=_NAME_LIMIT,
                        description="The staff member it is from (shown to the customer where "
                                    "the channel shows names)")
    attachments: list[FileIn] = Field(
        default_factory=list, max_length=10,
        description="Files sent with the reply (an email attachment, MMS or WhatsApp media, a "
                    "Telegram document, ...); each channel's size and type limits apply when "
                    "it is sent, and a file that cannot go fails the reply with the reason")

    @model_validator(mode="after")
    def _says_something(self) -> ReplyIn:
        if not self.text and not self.attachments:
            raise ValueError("a reply needs text or attachments")
        return self


class NoteIn(Strict):
    text: str = Field(min_length=1, max_length=_TEXT_LIMIT)
    author: str = Field(min_length=1, max_length=_NAME_LIMIT)


class ActionIn(Strict):
    action: Literal["resolve", "reopen", "assign", "snooze", "priority", "tag"]
    value: str | list[str] | None = Field(
        default=None, description='assign: a name or null; snooze: "2h", "1d" or "morning"; '
                                  'priority: low, normal, high or urgent; tag: the tags')
    note: str | None = Field(default=None, max_length=_TEXT_LIMIT,
                             description="resolve: what solved it")
    author: str = Field(min_length=1, max_length=_NAME_LIMIT)


class ContactPatch(Strict):
    name: str | None = Field(default=None, max_length=_NAME_LIMIT)
    tags: list[str] | None = Field(default=None, max_length=100,
                                   description='All the tags: "vip", "lang:de", ...')
    language: str | None = Field(default=None, max_length=16, description='"de", "pt-br"')


class ConversationQuery(Strict):
    status: Literal["open", "pending", "snoozed", "resolved"] | None = None
    channel: str | None = Field(default=None, max_length=16)
    tag: str | None = Field(default=None, max_length=64)
    contact: str | None = Field(default=None, max_length=320,
                                description="A contact id or one of its addresses")
    q: str | None = Field(default=None, max_length=500, description="Words in the messages")
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=200)


class ReportQuery(Strict):
    since: str = Field(default="7d", max_length=16, description='"7d", "24h", "1h30m"')
    by: Literal["channel", "tag", "agent"] | None = Field(
        default=None, description="Groups instead of channels (as `frontdesk report --by`)")
    channel: str | None = Field(default=None, max_length=16, description="Only this channel")
    tag: str | None = Field(default=None, max_length=64, description="Only this tag")
