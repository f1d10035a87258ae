"""Text from customers cannot drive the operator's terminal (issue 14, item 5).

A mail whose sender name, subject, body and attachment name carry terminal escapes (an OSC 8
hyperlink, "clear screen", a C1 CSI, BEL, a right-to-left override) arrives over real SMTP, and
an SMS whose From value (stored as sent) carries a line break that would forge a line of output
arrives through a signed Twilio webhook. Every human-readable command shows those characters
escaped (``\\x1b``, ``\\x9b``, ``\\u202e``; ``\\n`` in one-line fields) and never passes them
through; ``--json`` keeps the exact stored text.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select

from frontdesk.storage.models import InboundJournal
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, FakeTwilio
from tests.support.helpers import cli_config, detail, eventually, processed, run_cli, send

LINK = "\x1b]8;;http://evil.example/\x07click here\x1b]8;;\x07"
NAME = f"Ada {LINK}\x9b31m\u202eLovelace"
SUBJECT = "Refund \x1b[2J\x07now\x9b2J\u2066please"
BODY = (f"Hello,\n{LINK} to see the order.\n\x1b[2J\x1b[H\x07\x9b1;1H\x08\x7f\u202egnp.exe\n"
        "Thanks\tAda\n")
FILENAME = "invoice\x1b[8m\u202efdp.exe"
SMS_FROM = "+1555\x1b[2J\r\nFD-99  open  sms  forged line"
SMS_BODY = "Where is my parcel?\x1b]0;pwned\x07\x9b6n"

UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
"""What must never reach a terminal raw: C0 controls but newline and tab, DEL, C1, bidi
overrides and isolates."""


def raw_mail() -> bytes:
    """The same mail written by hand, so that no library tidies the headers first."""
    def word(text: str) -> str:
        return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="

    body = base64.b64encode(BODY.encode()).decode()
    return (f"From: {word(NAME)} <ada@example.org>\r\n"
            "To: support@example.com\r\n"
            f"Subject: {word(SUBJECT)}\r\n"
            "Message-ID: <hostile@example.org>\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{body}\r\n"
            "--b\r\nContent-Type: application/pdf\r\n"
            f'Content-Disposition: attachment; filename="{word(FILENAME)}"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n"
            f"{base64.b64encode(b'%PDF-1.4 not really').decode()}\r\n--b--\r\n").encode()


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


async def _journaled(d: Any, n: int) -> bool:
    async with d.store.reader() as s:
        count = (await s.execute(select(func.count()).select_from(InboundJournal))).scalar_one()
    return int(count) >= n


@pytest.fixture
async def hostile(make_settings: Any, daemon_factory: Any, twilio: FakeTwilio) -> Any:
    """A daemon holding FD-1 (the hostile mail) and FD-2 (the hostile SMS)."""
    d = await daemon_factory(make_settings(
        http={"public_url": PUBLIC_URL},
        twilio={"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN,
                "sms_from": "+15550001111", "api_base_url": twilio.base_url}))
    twilio.daemon_port = d.http.port
    await send(d.email.smtp.port, raw_mail())
    await eventually(lambda: processed(d.store))
    status, _ = await twilio.post("/webhooks/twilio/sms",
                                  twilio.inbound(SMS_BODY, sender=SMS_FROM))
    assert status == 200
    await eventually(lambda: _journaled(d, 2))
    await eventually(lambda: processed(d.store))
    return d


def assert_terminal_safe(out: str) -> None:
    found = UNSAFE.findall(out)
    assert not found, f"raw control characters reach the terminal: {found!r}\n{out!r}"


async def test_human_output_escapes_what_customers_wrote(
        hostile: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    stored = await detail(hostile.store, 1)
    # The store keeps what the customer sent (parse keeps the controls): the danger is real.
    assert "\x1b]8;;" in stored["subject"] + stored["contact"]["name"]
    assert "\x1b[2J" in stored["messages"][0]["text"]

    sms = await detail(hostile.store, 2)
    assert sms["contact"]["identities"][0]["address"] == SMS_FROM  # kept as sent
    cfg = cli_config(hostile, tmp_path)

    commands = [
        ("conversations",), ("show", "FD-1"), ("show", "FD-2"),
        ("contact", "show", "ada@example.org"), ("contact", "show", "1"),
        ("contact", "show", "2"), ("search", "thanks"), ("search", "parcel"), ("journal",),
        ("report",),
    ]
    for argv in commands:
        code, out, err = await run_cli(capsys, *argv, "-c", cfg)
        assert code == 0, (argv, err)
        assert_terminal_safe(out)
        assert_terminal_safe(err)

    code, out, _ = await run_cli(capsys, "conversations", "-c", cfg)
    assert len(out.splitlines()) == 2  # the SMS sender's line break forges no third row
    assert "\\x1b[2J" in out and "\\x9b" in out and "\\r\\nFD-99" in out
    assert not any(line.lstrip().startswith("FD-99") for line in out.splitlines())

    for argv in (("show", "FD-2"), ("contact", "show", "2")):
        code, out, _ = await run_cli(capsys, *argv, "-c", cfg)
        assert "+1555\\x1b[2J\\r\\nFD-99  open" in out
        assert not any(line.lstrip().startswith("FD-99") for line in out.splitlines())

    code, out, _ = await run_cli(capsys, "show", "FD-1", "-c", cfg)
    assert "\\x1b]8;;http://evil.example/\\x07click here" in out  # visible, not a link
    assert "\\u202e" in out and "\\x7f" in out and "\\x08" in out
    assert "   Thanks\tAda" in out  # a body keeps its lines and tabs
    assert "attachment: invoice[8m\\u202efdp.exe" in out  # parse drops C0 from file names
    assert not any(line.lstrip().startswith("FD-99") for line in out.splitlines())

    # A reply queued to the customer: the outbox listing shows the customer's name escaped.
    code, _, err = await run_cli(capsys, "reply", "FD-1", "On its way.", "--as", "Grace",
                                 "-c", cfg)
    assert code == 0, err
    code, out, err = await run_cli(capsys, "outbox", "-c", cfg)
    assert code == 0, err
    assert_terminal_safe(out)


async def test_json_keeps_the_exact_text(
        hostile: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    stored = await detail(hostile.store, 1)
    cfg = cli_config(hostile, tmp_path)

    code, out, err = await run_cli(capsys, "show", "FD-1", "--json", "-c", cfg)
    assert code == 0, err
    assert_terminal_safe(out)  # C1 and bidi characters are \u-escaped in the JSON text too
    shown = json.loads(out)
    assert shown["subject"] == stored["subject"]
    assert shown["contact"]["name"] == stored["contact"]["name"] == NAME
    assert shown["messages"][0]["text"] == stored["messages"][0]["text"]
    filename = shown["messages"][0]["attachments"][0]["filename"]
    assert filename == stored["messages"][0]["attachments"][0]["filename"]
    assert "\u202efdp.exe" in filename
    assert "\x9b2J\u2066please" in shown["subject"]

    code, out, err = await run_cli(capsys, "show", "FD-2", "--json", "-c", cfg)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["contact"]["identities"][0]["address"] == SMS_FROM
    assert shown["messages"][0]["text"] == SMS_BODY

    code, out, err = await run_cli(capsys, "conversations", "--json", "-c", cfg)
    assert code == 0, err
    assert_terminal_safe(out)
    listed = {c["reference"]: c for c in json.loads(out)}
    assert listed["FD-1"]["subject"] == stored["subject"]
    assert listed["FD-2"]["contact"]["identities"][0]["address"] == SMS_FROM

    code, out, err = await run_cli(capsys, "contact", "show", "1", "--json", "-c", cfg)
    assert code == 0, err
    assert_terminal_safe(out)
    assert json.loads(out)["name"] == NAME
