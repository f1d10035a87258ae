"""A contact staff logged (a phone call, a visit, a letter): the request body of
``POST /api/v1/inbound``, of ``frontdesk log`` and of the Slack form, and its journal row.

:class:`LoggedContact` checks what a person typed, with errors a person understands (a phone
number needs its country code; an email address must look like one; the text is required).
:func:`journal_row` is the row the journal keeps: compact JSON of ``{channel, external_id,
contact: {name, email, phone}, subject, text, author, at}`` under the remote id
``external_id``. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from frontdesk.domain.contacts import normalise_phone

LOGGED_CHANNELS = ("phone", "in_person", "letter")
"""The customer channels of contacts staff log."""

MAX_NAME = 200
MAX_SUBJECT = 200
MAX_TEXT = 10_000
MAX_EXTERNAL_ID = 200

_EMAIL = re.compile(r"^[^@\s<>()\[\],;:\"]{1,64}@[^@\s<>()\[\],;:\".]+(\.[^@\s<>()\[\],;:\".]+)+$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ONE_LINE_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _one_line(value: str, what: str) -> str:
    text = value.strip()
    if _ONE_LINE_CONTROL.search(text):
        raise ValueError(f"the {what} must be one line of text without control characters")
    return text


class ContactDetails(BaseModel):
    """Who the contact was with: what they told staff. Any field may be empty; replies go to the
    email address if there is one, else by SMS to the phone number; with neither, someone must
    call them back."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=MAX_NAME,
                      description="The customer's name as they gave it (one line).",
                      examples=["Ada Lovelace"])
    email: str | None = Field(
        default=None, max_length=254,
        description="The customer's email address: replies and the acknowledgement go there, "
                    "and the contact is found or made by it.",
        examples=["ada@example.org"])
    phone: str | None = Field(
        default=None, max_length=40,
        description="The customer's phone number in international form with its country code "
                    "(E.164, like +442079460958; spaces and dashes are fine). Without an email "
                    "address, replies go there by SMS and the contact is found or made by it.",
        examples=["+44 20 7946 0958"])

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _one_line(value, "name")

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        text = (value or "").strip().lower()
        if not text:
            return None
        if not _EMAIL.match(text):
            raise ValueError(f"{value!r} is not an email address (like ada@example.org)")
        return text

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        text = (value or "").strip()
        if not text:
            return None
        if not text.startswith("+") and not text.startswith("00"):
            raise ValueError(f"{value!r} has no country code: give the number in international "
                             "form, like +442079460958")
        number = normalise_phone("+" + text[2:] if text.startswith("00") else text)
        if number is None:
            raise ValueError(f"{value!r} is not a phone number (give it in international form, "
                             "like +442079460958)")
        return number


class LoggedContact(BaseModel):
    """A contact taken by staff (a phone call, a visit, a letter), to become a conversation on
    its channel, acknowledged and timed like any customer message."""

    model_config = ConfigDict(extra="forbid")

    channel: Literal["phone", "in_person", "letter"] = Field(
        description="How the customer got in touch.")
    external_id: str = Field(
        min_length=1, max_length=MAX_EXTERNAL_ID,
        description="Your id of this contact (a call id, a letter's scan number). The same id "
                    "again is stored once and answers the same reference.",
        examples=["call-2026-11-23-0042"])
    contact: ContactDetails = Field(default_factory=ContactDetails,
                                    description="Who the contact was with.")
    subject: str = Field(default="", max_length=MAX_SUBJECT,
                         description="What it is about, one line (default: the text's first "
                                     "words).",
                         examples=["Order 1234 never arrived"])
    text: str = Field(min_length=1, max_length=MAX_TEXT,
                      description="What the customer said or wrote.",
                      examples=["Called about order 1234: it has not arrived after two weeks."])
    author: str = Field(min_length=1, max_length=MAX_NAME,
                        description="The staff member who took the contact.",
                        examples=["Grace Hopper"])

    @field_validator("external_id")
    @classmethod
    def _external_id(cls, value: str) -> str:
        text = _one_line(value, "external id")
        if not text:
            raise ValueError("the external id is empty")
        return text

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        return _one_line(value, "subject")

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        text = _CONTROL.sub("", value.replace("\r\n", "\n").replace("\r", "\n")).strip()
        if not text:
            raise ValueError("the text is empty: write what the customer said")
        return text

    @field_validator("author")
    @classmethod
    def _author(cls, value: str) -> str:
        text = _one_line(value, "author")
        if not text:
            raise ValueError("the author is empty: name the staff member who took the contact")
        return text


FIELD_NAMES: dict[tuple[str, ...], str] = {
    ("contact", "name"): "name", ("contact", "email"): "email", ("contact", "phone"): "phone"}


def problems(error: ValidationError) -> dict[str, str]:
    """A :class:`LoggedContact`'s validation errors as ``{field: why}`` in plain words
    (``email``, ``phone`` and ``name`` for the contact's fields)."""
    found: dict[str, str] = {}
    for item in error.errors():
        loc = tuple(str(part) for part in item.get("loc", ()))
        field = FIELD_NAMES.get(loc[:2]) or (loc[0] if loc else "body")
        message = str(item.get("msg", "is not valid")).removeprefix("Value error, ")
        if item.get("type") == "missing":
            message = "is required"
        elif item.get("type") == "string_too_short":
            message = "is empty"
        found.setdefault(field, message)
    return found


def journal_row(item: LoggedContact, at: datetime,
                token: str = "") -> tuple[str, str, bytes]:
    """(channel, remote id, raw row) of a logged contact, taken at ``at``; ``token``: the API
    token it came through (named in the audit)."""
    row = {"channel": item.channel, "external_id": item.external_id,
           "contact": {"name": item.contact.name, "email": item.contact.email,
                       "phone": item.contact.phone},
           "subject": item.subject, "text": item.text, "author": item.author,
           "at": at.astimezone(UTC).isoformat()}
    if token:
        row["token"] = token
    raw = json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode()
    return item.channel, item.external_id, raw
