#!/usr/bin/env python3
"""SMTP ingest throughput: ``frontdesk run`` against a bare aiosmtpd server, same client.

For each workload (2 KB plain text mail; ~30 KB multipart/alternative HTML newsletter with an
~8 KB PDF attachment) the benchmark

1. starts ``frontdesk run`` as a subprocess on a fresh SQLite store in a temp dir and waits for
   ``GET /readyz`` == 200;
2. sends N messages (unique Message-IDs) over C reused SMTP sessions from a *separate* client
   process (raw asyncio streams: EHLO once, then MAIL/RCPT/DATA per message, each message
   pre-encoded with CRLF and dot-stuffing before the clock starts), timing every
   end-of-DATA -> 250;
3. polls the SQLite file read-only every 100 ms until the journal has no pending row and
   ``messages`` holds N rows (the "processed-all" time, counted from the first connect);
4. verifies journal == messages == N, no failed row, every message answered 250, and that
   SIGTERM gives exit code 0;
5. repeats the send against a bare aiosmtpd server (its handler answers 250 without storing),
   in its own subprocess, with the same client, N and C.

Where Postfix's ``smtp-source`` is installed it is also run (plain workload) against a fresh
frontdesk and a fresh bare server, as a cross-check with a C client.

Usage (with the venv's python)::

    python -m benchmarks.smtp_ingest [--messages 5000] [--connections 20] [--quick]
                                     [--profile] [--keep]

The target: frontdesk's send rate >= 0.5 x the bare server's in both workloads.

PostgreSQL mode (``--postgres-url URL``, or ``--postgres-url`` alone for
``$FRONTDESK_TEST_POSTGRES_URL``): the same client and workloads against frontdesk on a fresh
PostgreSQL database per run (dropped after), with one and with two ``frontdesk run`` processes on
that database (``--instances 1|2|1,2``; each has its own SMTP and HTTP port and the client's
sessions alternate between them). It prints msgs/s and processing rate for each and the ratio
two / one, and checks that the two did no work twice: journal == inbound messages ==
conversations == N, no journal row processed twice, at most one acknowledgement per
conversation. No bare server or smtp-source runs in this mode, and it waits until everything is
processed (``--process-timeout 0`` unless given). Exit code 1 when a check fails.
"""

# The HTML newsletter fixture below keeps its long lines as a mail client would send them.
# ruff: noqa: E501

from __future__ import annotations

import abc
import argparse
import asyncio
import base64
import binascii
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import (
    PgDatabase,
    asyncpg_dsn,
    code_version,
    free_port,
    start_frontdesk,
    stop_process,
)

HERE = Path(__file__).resolve()
TARGET_RATIO = 0.5
MAIL_FROM = "customer@example.org"
RCPT_TO = "support@example.com"
SMTP_SOURCE = "/usr/sbin/smtp-source"
POSTGRES_ENV = "FRONTDESK_TEST_POSTGRES_URL"

# --- the mail ------------------------------------------------------------------------------------

CUSTOMERS = [
    ("Ada Lovelace", "ada"), ("Grace Hopper", "grace"), ("Alan Turing", "alan"),
    ("Katherine Johnson", "katherine"), ("Edsger Dijkstra", "edsger"), ("Barbara Liskov", "barbara"),
    ("Donald Knuth", "don"), ("Margaret Hamilton", "margaret"), ("Ken Thompson", "ken"),
    ("Frances Allen", "fran"), ("Dennis Ritchie", "dmr"), ("Radia Perlman", "radia"),
]

PARAGRAPHS = [
    "I ordered a pair of walking boots from your shop on the 14th and the tracking page has "
    "said \"label created\" for nine days now. The confirmation email promised delivery within "
    "three to five working days, and I need the boots for a trip at the end of next week.",
    "Could you please check with the courier what is happening? If the parcel is lost I would "
    "rather have a refund than wait for a replacement, unless you can send one by express "
    "delivery at no extra cost. My order number is in the subject line.",
    "I also noticed that I was charged twice on my card, once on the day I ordered and once "
    "three days later. The amounts are identical. I have attached the invoice I received; the "
    "bank statement shows both payments as completed, not pending.",
    "I have been a customer for several years and this is the first time something has gone "
    "wrong, so I am sure it is a mix-up somewhere. I would appreciate a quick reply telling me "
    "what you will do and by when, because I will have to buy boots elsewhere otherwise.",
    "For what it is worth, the delivery address on the order is correct and someone is at home "
    "during the day, so a missed delivery should not be the reason. Nobody has left a card "
    "either. Thank you for looking into this.",
]

_DOT_LINE = re.compile(rb"(?m)^\.")


def _wrap(text: str, width: int = 72) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return lines


def _headers(i: int, run_id: str, subject: str, extra: list[str]) -> tuple[str, str, list[str]]:
    name, local = CUSTOMERS[i % len(CUSTOMERS)]
    addr = f"{local}.{i % 397}@example.org"  # a few hundred distinct customers
    day = 1 + i % 28
    h = [
        f"Received: from mail.example.org (mail.example.org [192.0.2.{1 + i % 250}])",
        f"\tby mx.example.net (Postfix) with ESMTPS id {i:08X}",
        f"\tfor <{RCPT_TO}>; Tue, {day} Mar 2026 10:{i % 60:02d}:00 +0000 (UTC)",
        f"From: {name} <{addr}>",
        "To: Example Support <support@example.com>",
        f"Subject: {subject}",
        f"Date: Tue, {day} Mar 2026 10:{i % 60:02d}:00 +0000",
        f"Message-ID: <bench.{run_id}.{i}@example.org>",
        *extra,
    ]
    return name, addr, h


def _finish(lines: list[str]) -> bytes:
    """CRLF line endings, dot-stuffing, and the end-of-DATA marker."""
    data = ("\r\n".join(lines) + "\r\n").encode("utf-8")
    return _DOT_LINE.sub(b"..", data) + b".\r\n"


def plain_mail(i: int, run_id: str, size: int = 2048) -> bytes:
    """A customer's plain text mail of about ``size`` bytes (headers included)."""
    name, _, h = _headers(i, run_id, f"Order {100000 + i} never arrived", [
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "User-Agent: Mozilla Thunderbird",
    ])
    body = ["Hello,", ""]
    sign = ["Kind regards,", name.split()[0]]
    k = i
    while True:  # whole lines until the mail is about `size` bytes
        for line in [*_wrap(PARAGRAPHS[k % len(PARAGRAPHS)]), ""]:
            if len(_finish([*h, "", *body, line, *sign])) > size:
                return _finish([*h, "", *body, *sign])
            body.append(line)
        k += 1


def _newsletter_html() -> str:
    """A newsletter-style HTML body: table layout, a <style> block, inline styles, images."""
    rows = []
    products = ["Trail boots", "Waterproof jacket", "Merino socks (3 pairs)", "Hiking poles",
                "Daypack 24 l", "Head torch", "Insulated flask", "Map case", "Gaiters",
                "First aid kit"]
    for n, product in enumerate(products):
        price = 19.99 + 7.5 * n
        rows.append(f"""
        <tr>
          <td class="item" style="padding:12px 16px;border-bottom:1px solid #e6e9ee;">
            <a href="https://shop.example.com/p/{1000 + n}?utm_source=newsletter&amp;utm_medium=email&amp;utm_campaign=spring" style="color:#1a4d8f;text-decoration:none;font-weight:600;">
              <img src="https://cdn.example.com/img/products/{1000 + n}-thumb.jpg" width="64" height="64" alt="{product}" style="display:block;border:0;border-radius:4px;float:left;margin-right:12px;">
              {product}</a>
            <p style="margin:4px 0 0 0;color:#5b6470;font-size:13px;line-height:18px;">
              Tested on the fells by our own team. Free returns within 60 days, and a two-year
              guarantee on every item in this range.</p>
          </td>
          <td align="right" style="padding:12px 16px;border-bottom:1px solid #e6e9ee;white-space:nowrap;font-size:15px;color:#1f2933;">
            <s style="color:#9aa5b1;">&pound;{price + 10:.2f}</s><br><strong>&pound;{price:.2f}</strong>
          </td>
        </tr>""")
    articles = []
    for n, para in enumerate(PARAGRAPHS):
        articles.append(f"""
        <tr><td style="padding:16px 24px;font-family:Georgia,'Times New Roman',serif;font-size:15px;line-height:23px;color:#323f4b;">
          <h2 style="margin:0 0 8px 0;font-size:19px;color:#102a43;">Story {n + 1}: from the workshop</h2>
          <p style="margin:0;">{para}</p>
          <p style="margin:8px 0 0 0;"><a href="https://blog.example.com/{n}" style="color:#1a4d8f;">Read more &rarr;</a></p>
        </td></tr>""")
    return f"""<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" lang="en">
<head>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>Spring news from Example Outdoor</title>
<style type="text/css">
  body {{ margin:0; padding:0; background:#f0f4f8; -webkit-text-size-adjust:100%; }}
  table {{ border-collapse:collapse; mso-table-lspace:0pt; mso-table-rspace:0pt; }}
  img {{ border:0; line-height:100%; outline:none; text-decoration:none; }}
  .wrapper {{ width:100%; background:#f0f4f8; }}
  .container {{ width:600px; margin:0 auto; background:#ffffff; }}
  .item a:hover {{ text-decoration:underline !important; }}
  @media only screen and (max-width:620px) {{
    .container {{ width:100% !important; }}
    .hide-mobile {{ display:none !important; }}
  }}
</style>
</head>
<body style="margin:0;padding:0;background:#f0f4f8;">
<div style="display:none;max-height:0;overflow:hidden;">Up to 30% off trail gear this week only, plus stories from the workshop.</div>
<table class="wrapper" role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0">
<tr><td align="center" style="padding:24px 8px;">
  <table class="container" role="presentation" width="600" cellpadding="0" cellspacing="0" border="0" style="background:#ffffff;border-radius:6px;">
    <tr><td style="padding:20px 24px;background:#102a43;border-radius:6px 6px 0 0;">
      <img src="https://cdn.example.com/img/logo-white.png" width="160" height="40" alt="Example Outdoor" style="display:block;">
    </td></tr>
    <tr><td style="padding:24px;font-family:Helvetica,Arial,sans-serif;">
      <h1 style="margin:0;font-size:26px;line-height:32px;color:#102a43;">Spring sale: up to 30% off</h1>
      <p style="margin:12px 0 0 0;font-size:15px;line-height:22px;color:#486581;">Dear customer, thank you for your order. Here is what is new this month.</p>
    </td></tr>
    <tr><td>
      <table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0" style="font-family:Helvetica,Arial,sans-serif;">
        {''.join(rows)}
      </table>
    </td></tr>
    {''.join(articles)}
    <tr><td align="center" style="padding:24px;">
      <a href="https://shop.example.com/sale?utm_source=newsletter" style="display:inline-block;padding:14px 28px;background:#e12d39;color:#ffffff;font-family:Helvetica,Arial,sans-serif;font-weight:700;text-decoration:none;border-radius:4px;">Shop the sale</a>
    </td></tr>
    <tr><td style="padding:16px 24px;background:#f0f4f8;font-family:Helvetica,Arial,sans-serif;font-size:12px;line-height:18px;color:#829ab1;">
      Example Outdoor Ltd, 1 High Street, Keswick CA12 5AB. You receive this because you bought from us.
      <a href="https://shop.example.com/unsubscribe?u=XXXXXXXX" style="color:#829ab1;">Unsubscribe</a> &middot;
      <a href="https://shop.example.com/privacy" style="color:#829ab1;">Privacy</a>
    </td></tr>
  </table>
</td></tr>
</table>
</body>
</html>
"""


_HTML_QP: list[str] = []


def _html_qp() -> list[str]:
    if not _HTML_QP:
        qp = binascii.b2a_qp(_newsletter_html().encode("utf-8"), istext=True)
        _HTML_QP.extend(qp.decode("ascii").split("\n"))
    return _HTML_QP


def _pdf(i: int, size: int = 8192) -> bytes:
    rnd = random.Random(i)
    head = (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
            b"1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
            b"2 0 obj\n<< /Type /Pages /Kids [3 0 R] /Count 1 >>\nendobj\n"
            b"3 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>\nendobj\n"
            b"5 0 obj\n<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>\nendobj\n")
    tail = (f"\nendstream\nendobj\nxref\n0 6\n0000000000 65535 f \ntrailer\n"
            f"<< /Size 6 /Root 1 0 R /Info << /Title (Invoice {i}) >> >>\nstartxref\n"
            f"{len(head)}\n%%EOF\n").encode()
    n = size - len(head) - len(tail) - 60
    stream = rnd.randbytes(n)  # looks like a Flate-compressed content stream
    return head + f"4 0 obj\n<< /Length {n} /Filter /FlateDecode >>\nstream\n".encode() + stream + tail


def html_mail(i: int, run_id: str) -> bytes:
    """A ~30 KB multipart/mixed: multipart/alternative (text + newsletter HTML) + an ~8 KB PDF."""
    outer, inner = f"=_mixed_{run_id}_{i}", f"=_alt_{run_id}_{i}"
    name, _, h = _headers(i, run_id, f"Re: Your order {100000 + i} - invoice attached", [
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{outer}"',
        "X-Mailer: Microsoft Outlook 16.0",
    ])
    text = ["Hello,", ""]
    for k in range(4):
        text += [*_wrap(PARAGRAPHS[(i + k) % len(PARAGRAPHS)]), ""]
    text += ["Kind regards,", name, "", "> On 1 Mar 2026, Example Outdoor wrote:",
             "> Spring sale: up to 30% off trail gear this week only."]
    pdf = base64.encodebytes(_pdf(i)).decode("ascii").rstrip("\n").split("\n")
    lines = [
        *h, "", "This is a multi-part message in MIME format.", "",
        f"--{outer}",
        f'Content-Type: multipart/alternative; boundary="{inner}"', "",
        f"--{inner}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit", "",
        *text, "",
        f"--{inner}",
        "Content-Type: text/html; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable", "",
        *_html_qp(),
        f"--{inner}--", "",
        f"--{outer}",
        f'Content-Type: application/pdf; name="invoice-{100000 + i}.pdf"',
        f'Content-Disposition: attachment; filename="invoice-{100000 + i}.pdf"',
        "Content-Transfer-Encoding: base64", "",
        *pdf, "",
        f"--{outer}--",
    ]
    return _finish(lines)


WORKLOADS = {
    "plain-2k": ("2 KB plain text", plain_mail),
    "html-30k": ("~30 KB HTML newsletter + 8 KB PDF", html_mail),
}


# --- the client (runs in its own process) ---------------------------------------------------------

async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one (possibly multi-line) SMTP reply; return its code and last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed by the server")
        if line[3:4] != b"-":
            return int(line[:3]), line


async def _client(ports: list[int], messages: list[bytes], connections: int) -> dict[str, Any]:
    mail_cmd = f"MAIL FROM:<{MAIL_FROM}>\r\n".encode()
    rcpt_cmd = f"RCPT TO:<{RCPT_TO}>\r\n".encode()
    todo = iter(range(len(messages)))
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    errors: list[str] = []
    last_ok = [0.0]
    perf = time.perf_counter
    per_port: Counter[int] = Counter()  # 250s per server, when sessions are split

    async def session(k: int) -> None:
        port = ports[k % len(ports)]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            code, line = await _reply(reader)
            if code != 220:
                raise ConnectionError(f"greeting {line!r}")
            writer.write(b"EHLO client.example.org\r\n")
            code, line = await _reply(reader)
            if code != 250:
                raise ConnectionError(f"EHLO {line!r}")
            for i in todo:
                writer.write(mail_cmd)
                code, line = await _reply(reader)
                if code != 250:
                    codes[code] += 1
                    errors.append(f"MAIL {line!r}")
                    continue
                writer.write(rcpt_cmd)
                code, line = await _reply(reader)
                if code != 250:
                    codes[code] += 1
                    errors.append(f"RCPT {line!r}")
                    writer.write(b"RSET\r\n")
                    await _reply(reader)
                    continue
                writer.write(b"DATA\r\n")
                code, line = await _reply(reader)
                if code != 354:
                    codes[code] += 1
                    errors.append(f"DATA {line!r}")
                    continue
                t0 = perf()
                writer.write(messages[i])  # ends with "\r\n.\r\n"
                await writer.drain()
                code, line = await _reply(reader)
                t1 = perf()
                codes[code] += 1
                if code == 250:
                    latencies.append(t1 - t0)
                    last_ok[0] = time.monotonic()
                    per_port[port] += 1
                else:
                    errors.append(f"end of DATA {line!r}")
            writer.write(b"QUIT\r\n")
            await writer.drain()
            writer.close()
        except (OSError, ConnectionError, ValueError) as exc:
            errors.append(f"session {k}: {exc!r}")

    t_start = time.monotonic()
    await asyncio.gather(*(session(k) for k in range(connections)))
    latencies.sort()
    return {
        "t_start": t_start, "t_end": last_ok[0], "sent": len(messages),
        "ok": codes.get(250, 0), "codes": {str(c): n for c, n in codes.items()},
        "errors": errors[:10], "n_errors": len(errors),
        "p50": _percentile(latencies, 0.50), "p99": _percentile(latencies, 0.99),
        "max": latencies[-1] if latencies else None,
        "per_port": {str(p): n for p, n in per_port.items()},
    }


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def client_main(args: argparse.Namespace) -> None:
    build = WORKLOADS[args.workload][1]
    messages = [build(i, args.run_id) for i in range(args.messages)]
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    ports = [int(p) for p in args.ports.split(",")] if args.ports else [args.port]
    result = asyncio.run(_client(ports, messages, args.connections))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    result["avg_bytes"] = sum(map(len, messages)) / len(messages)
    print(json.dumps(result))


# --- the servers ---------------------------------------------------------------------------------

BARE_SERVER = '''\
"""A bare aiosmtpd server: answers 250 to every DATA without storing anything."""
import asyncio, sys
from aiosmtpd.smtp import SMTP

class Handler:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"

async def main(port):
    handler = Handler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="bare.test", ident="bare ESMTP", decode_data=False,
                     data_size_limit=26214400, enable_SMTPUTF8=True),
        "127.0.0.1", port, reuse_address=True)
    async with server:
        await server.serve_forever()

asyncio.run(main(int(sys.argv[1])))
'''


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (0.0 where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class Server:
    name = "?"
    pid: int
    smtp_port: int

    @property
    def smtp_ports(self) -> list[int]:
        """Where the client's sessions go (split between them, in turn)."""
        return [self.smtp_port]

    def cpu(self) -> float:
        """The server's CPU seconds so far (all its processes)."""
        return cpu_seconds(self.pid)

    def probe(self) -> StoreProbe | None:
        """A read-only view of the server's store (None: it keeps nothing)."""
        return None

    def stop(self) -> int | None: ...


class Frontdesk(Server):
    """A `frontdesk run` process with its config and store in a temp dir (as tests/test_process)."""

    name = "frontdesk"

    acknowledgements = True

    def __init__(self, tmp: Path, database_url: str | None = None) -> None:
        tmp.mkdir(parents=True)
        self.tmp = tmp
        self.smtp_port, self.http_port, relay_port = free_port(), free_port(), free_port()
        self.db = tmp / "frontdesk.db"
        self.database_url = database_url or f"sqlite+aiosqlite:///{self.db}"
        self.config = tmp / "frontdesk.toml"
        self.config.write_text(f"""
[database]
url = "{self.database_url}"
[http]
listen = "127.0.0.1:{self.http_port}"
[email]
inbox_addresses = ["support@example.com"]
[email.smtp_server]
listen = "127.0.0.1:{self.smtp_port}"
hostname = "frontdesk.test"
[email.outbound]
host = "127.0.0.1"
port = {relay_port}
from = "Example Support <support@example.com>"
starttls = "off"
[daemon]
data_dir = "{tmp}/data"
shutdown_timeout = "20s"
[sla]
business_hours = "always"
""" + ('[acknowledgement]\nglobal_rate_limits = ["1000000/10m"]  # all real customers\n'
       if self.acknowledgements else "[acknowledgement]\nenabled = false\n"))
        self.log = tmp / "frontdesk.log"
        self.process = start_frontdesk(self.config, self.http_port, self.log)
        self.pid = self.process.pid

    def probe(self) -> StoreProbe:
        if self.database_url.startswith("postgresql"):
            return PgProbe(self.database_url)
        return SqliteProbe(self.db)

    def stop(self) -> int | None:
        return stop_process(self.process)


class FrontdeskGroup(Server):
    """Several `frontdesk run` processes on one PostgreSQL database (a fresh one, dropped by
    :meth:`drop`), each with its own SMTP and HTTP port; started one after the other."""

    def __init__(self, tmp: Path, admin_url: str, instances: int) -> None:
        self.database = PgDatabase(admin_url)
        self.name = f"frontdesk PG x{instances}"
        self.members: list[Frontdesk] = []
        try:
            for k in range(instances):
                self.members.append(Frontdesk(tmp / f"instance-{k}", self.database.url))
        except BaseException:
            for member in self.members:
                member.stop()
            self.database.drop()
            raise
        self.pid = self.members[0].pid
        self.smtp_port = self.members[0].smtp_port
        self.log = self.members[0].log

    @property
    def smtp_ports(self) -> list[int]:
        return [m.smtp_port for m in self.members]

    def cpu(self) -> float:
        return sum(cpu_seconds(m.pid) for m in self.members)

    def probe(self) -> StoreProbe:
        return PgProbe(self.database.url)

    def stop(self) -> int | None:
        """SIGTERM to every member; the worst exit code (None: one had to be killed)."""
        codes = [m.stop() for m in self.members]
        if any(c is None for c in codes):
            return None
        return next((c for c in codes if c != 0), 0)

    @property
    def logs(self) -> list[Path]:
        return [m.log for m in self.members]

    def drop(self) -> None:
        self.database.drop()


class Bare(Server):
    name = "bare aiosmtpd"

    def __init__(self, tmp: Path) -> None:
        tmp.mkdir(parents=True)
        script = tmp / "bare_smtpd.py"
        script.write_text(BARE_SERVER)
        self.smtp_port = free_port()
        self.log = tmp / "bare.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(script), str(self.smtp_port)], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        self.pid = self.process.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit("bare aiosmtpd server exited during start:\n" + self.log.read_text())
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1) as s:
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.process.kill()
        sys.exit("bare aiosmtpd server not ready within 30 s:\n" + self.log.read_text())

    def stop(self) -> int | None:
        stop_process(self.process, timeout=10)
        return None


# --- one measured run ----------------------------------------------------------------------------

@dataclass
class Result:
    workload: str
    server: str
    client: str = "asyncio"
    rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    processed_s: float | None = None
    processed_floor_s: float | None = None  # not all processed yet after this long
    processing_rate: float | None = None
    processed_at_send_end: int | None = None
    server_cpu_send: float | None = None  # server CPU seconds / wall seconds in the send phase
    client_cpu_send: float | None = None
    avg_bytes: float | None = None
    ratio: float | None = None
    checks: list[str] = field(default_factory=list)  # failed checks
    notes: list[str] = field(default_factory=list)


COUNTS_SQL = ("SELECT (SELECT count(*) FROM inbound_journal),"
              " (SELECT count(*) FROM inbound_journal WHERE state = 'pending'),"
              " (SELECT count(*) FROM inbound_journal WHERE state = 'failed'),"
              " (SELECT count(*) FROM messages WHERE direction = 'in')")


def _counts(db: sqlite3.Connection) -> tuple[int, int, int, int]:
    """(journal rows, pending, failed, inbound messages).

    Only inbound rows count: acknowledgements and replies are ``messages`` rows too."""
    row = db.execute(COUNTS_SQL).fetchone()
    return row[0], row[1], row[2], row[3]


def _open_ro(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=5)
    db.execute("PRAGMA busy_timeout=5000")
    return db


class StoreProbe(abc.ABC):
    """Read-only queries on a frontdesk store while it runs."""

    errors: tuple[type[BaseException], ...] = ()

    @abc.abstractmethod
    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """The rows a query returns."""

    def counts(self) -> tuple[int, int, int, int]:
        """(journal rows, pending, failed, inbound messages), as :func:`_counts`."""
        row = self.rows(COUNTS_SQL)[0]
        return row[0], row[1], row[2], row[3]

    @abc.abstractmethod
    def close(self) -> None:
        """Let go of the connection."""


class SqliteProbe(StoreProbe):
    errors = (sqlite3.Error,)

    def __init__(self, path: Path) -> None:
        self.db = _open_ro(path)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return list(self.db.execute(sql).fetchall())

    def counts(self) -> tuple[int, int, int, int]:
        return _counts(self.db)

    def close(self) -> None:
        self.db.close()


class PgProbe(StoreProbe):
    """One asyncpg connection, driven from this (synchronous) process by a private loop."""

    def __init__(self, url: str) -> None:
        import asyncpg

        self.errors = (asyncpg.PostgresError, OSError)
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(asyncpg_dsn(url), timeout=10))

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.loop.run_until_complete(self.conn.fetch(sql))]

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.conn.close())
        finally:
            self.loop.close()


class Profiler:
    """py-spy record on the server process, when --profile asks and py-spy is installed."""

    def __init__(self, pid: int, out: Path) -> None:
        exe = Path(sys.executable).parent / "py-spy"
        self.exe = str(exe) if exe.exists() else shutil.which("py-spy")
        self.out = out
        self.process: subprocess.Popen[bytes] | None = None
        if self.exe:
            self.process = subprocess.Popen(
                [self.exe, "record", "-p", str(pid), "-r", "100", "-f", "raw", "-o", str(out),
                 "--gil", "--nonblocking"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)

    def stop(self) -> str:
        if self.process is None:
            return "py-spy not installed (pip install py-spy into the venv)"
        self.process.send_signal(signal.SIGINT)
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return "py-spy did not stop"
        if not self.out.exists():
            return "py-spy wrote nothing: " + err.decode(errors="replace")[-300:]
        return summarize_profile(self.out)


def summarize_profile(path: Path, top: int = 12) -> str:
    """Where the GIL-holding (on-CPU Python) samples went: parts of the daemon, top leaf frames.

    SQLAlchemy's asyncio layer runs ORM work in greenlets, so py-spy shows those stacks without
    their async caller: they are counted as "SQLAlchemy/aiosqlite in greenlets".
    """
    leaf: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    total = 0
    markers = [  # first match wins
        ("journal group commit (Journal._commit)", ("Journal._commit",)),
        ("processor: MIME parsing (parse_email)", ("parse_email",)),
        ("processor: store (Processor, outside greenlets)", ("Processor.",)),
        ("SQLAlchemy/aiosqlite in greenlets (caller hidden; mostly the processor)",
         ("greenlet_spawn", "sqlalchemy/")),
        ("SMTP protocol (aiosmtpd)", ("aiosmtpd/",)),
        ("aiosqlite worker threads", ("aiosqlite/",)),
        ("asyncio event loop and other", ("",)),
    ]
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if frames:
            leaf[frames[-1]] += n
        for label, needles in markers:
            if any(needle in f for f in frames for needle in needles):
                parts[label] += n
                break
    if not total:
        return "no samples"
    out = [f"    {total} samples holding the GIL at 100 Hz ({total / 100:.1f} s of Python CPU)"]
    out += [f"    {100 * n / total:5.1f}%  {label}" for label, n in parts.most_common()]
    out.append("    top leaf frames:")
    out += [f"    {100 * n / total:5.1f}%  {f[:110]}" for f, n in leaf.most_common(top)]
    return "\n".join(out)


def _start_client(ports: list[int], workload: str, n: int, c: int,
                  run_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.smtp_ingest", "--client", "--ports", ",".join(map(str, ports)),
         "--workload", workload,
         "--messages", str(n), "--connections", str(c), "--run-id", run_id],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def measure(server: Server, workload: str, n: int, c: int, tmp: Path,
            profile: bool = False, process_timeout: float = 0) -> Result:
    res = Result(workload, server.name)
    run_id = uuid.uuid4().hex[:10]
    db = server.probe()
    profiler = Profiler(server.pid, tmp / f"py-spy-{workload}.txt") if profile else None
    cpu0 = server.cpu()
    client = _start_client(server.smtp_ports, workload, n, c, run_id)
    samples: list[tuple[float, float, int]] = []  # (monotonic, server cpu, processed messages)
    t_done: float | None = None
    t_sent: float | None = None  # when the client process was seen to have exited
    deadline = time.monotonic() + 120 + n / 5
    while time.monotonic() < deadline:
        now = time.monotonic()
        cpu = server.cpu()
        if db is not None:
            journal, pending, failed, processed = db.counts()
            samples.append((now, cpu, processed))
            if t_done is None and journal >= n and pending == 0 and processed >= n:
                t_done = now
        else:
            samples.append((now, cpu, 0))
        if client.poll() is not None:
            t_sent = t_sent or now
            if db is None or t_done is not None:
                break
            if process_timeout and now - t_sent > process_timeout:
                break
        time.sleep(0.1)
    out, err = client.communicate(timeout=60)
    if profiler is not None:
        res.notes.append("py-spy profile of the server, whole run:\n" + profiler.stop())
    if client.returncode != 0 or not out.strip():
        res.checks.append(f"client failed (exit {client.returncode}): {err[-2000:]}")
        return res
    r = json.loads(out)
    send_s = r["t_end"] - r["t_start"]
    res.avg_bytes = r["avg_bytes"]
    if r["ok"] and send_s > 0:
        res.rate = r["ok"] / send_s
        res.p50_ms, res.p99_ms = r["p50"] * 1000, r["p99"] * 1000
        res.client_cpu_send = r["cpu_s"] / send_s
    # Server CPU share over the send phase, from the samples bracketing it.
    before = [s for s in samples if s[0] <= r["t_start"]]
    during = [s for s in samples if s[0] <= r["t_end"]]
    first = before[-1] if before else (samples[0] if samples else None)
    last = during[-1] if during else None
    if first and last and last[0] > first[0]:
        res.server_cpu_send = (last[1] - first[1]) / (last[0] - first[0])
        res.processed_at_send_end = last[2] if db is not None else None
    if r["ok"] != n:
        res.checks.append(f"{r['ok']} of {n} messages got 250; replies {r['codes']}, "
                          f"errors {r['n_errors']}: {r['errors'][:3]}")
    if db is not None:
        journal, pending, failed, processed = db.counts()
        if t_done is None:
            elapsed = res.processed_floor_s = time.monotonic() - r["t_start"]
            res.processing_rate = processed / elapsed
            res.checks.append(
                f"only {processed} of {n} messages processed {elapsed:.0f} s after the first "
                f"connect ({res.processing_rate:.0f}/s; the limit is {process_timeout:.0f} s "
                "after sending ends: --process-timeout 0 waits until done)")
            if failed or journal != n:
                res.checks.append(f"store: journal {journal}, failed {failed} (want {n}, 0)")
        else:
            res.processed_s = t_done - r["t_start"]
            res.processing_rate = n / res.processed_s
            if journal != n or processed != n or failed or pending:
                res.checks.append(f"store: journal {journal}, messages {processed}, pending "
                                  f"{pending}, failed {failed} (want {n}, {n}, 0, 0)")
        try:
            out = db.rows("SELECT count(*) FROM messages WHERE direction = 'out'")[0][0]
            box = dict(db.rows("SELECT state, count(*) FROM outbox GROUP BY state"))
            if out or box:
                res.notes.append(f"the daemon also wrote {out} outbound message(s) "
                                 f"(acknowledgements) and outbox rows {box}; the relay is closed, "
                                 "so each delivery fails and is retried")
        except db.errors:
            pass
        if isinstance(server, FrontdeskGroup):
            try:
                check_no_duplicates(db, n, res)
            except db.errors as exc:
                res.checks.append(f"cannot check the store for duplicates: {exc!r}")
        db.close()
        if isinstance(server, FrontdeskGroup) and len(server.members) > 1:
            split = {p: r.get("per_port", {}).get(str(p), 0) for p in server.smtp_ports}
            res.notes.append("250s per instance (SMTP port: count): " +
                             ", ".join(f"{p}: {k}" for p, k in split.items()))
        if profile:
            used = server.cpu() - cpu0
            res.notes.append(f"server CPU during the whole run: {used:.1f} s")
    return res


def check_no_duplicates(db: StoreProbe, n: int, res: Result) -> None:
    """Several instances on one store must not do the same work twice: one conversation per
    message (each has its own Message-ID and no In-Reply-To), at most one acknowledgement per
    conversation, one inbound message per journal row."""
    conversations = db.rows("SELECT count(*) FROM conversations")[0][0]
    if conversations != n:
        res.checks.append(f"store: {conversations} conversations for {n} messages (want {n})")
    doubled = db.rows(
        "SELECT count(*) FROM (SELECT journal_id FROM messages WHERE direction = 'in'"
        " GROUP BY journal_id HAVING count(*) > 1) AS d")[0][0]
    if doubled:
        res.checks.append(f"store: {doubled} journal row(s) processed into more than one message")
    acks = db.rows(
        "SELECT count(*), coalesce(sum(k - 1), 0) FROM (SELECT count(*) AS k FROM messages"
        " WHERE direction = 'out' AND author = 'system' GROUP BY conversation_id"
        " HAVING count(*) > 1) AS d")[0]
    if acks[0]:
        res.checks.append(f"store: {acks[0]} conversation(s) with more than one acknowledgement "
                          f"({acks[1]} extra)")


def run_smtp_source(server: Server, n: int, c: int, extra: list[str]) -> Result:
    cmd = [SMTP_SOURCE, "-c", *extra, "-s", str(c), "-m", str(n), "-l", "2048",
           "-f", "a@example.org", "-t", RCPT_TO, f"127.0.0.1:{server.smtp_port}"]
    label = "smtp-source" + (" " + " ".join(extra) if extra else "")
    res = Result("plain-2k", server.name, client=label)
    started = time.monotonic()
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=300)
    wall = time.monotonic() - started
    res.rate = n / wall
    if done.returncode != 0:
        res.checks.append(f"smtp-source exit {done.returncode}: {done.stderr.strip()[-300:]}")
    if isinstance(server, Frontdesk):
        time.sleep(0.2)
        db = _open_ro(server.db)
        journal = _counts(db)[0]
        db.close()
        if journal != n:
            res.notes.append(f"journal has {journal} rows for {n} sent (smtp-source's "
                             "Message-IDs repeat; the rest were deduplicated)")
    res.notes.append("ran: " + " ".join(cmd))
    return res


def stop_frontdesk(fd: Frontdesk | FrontdeskGroup, res: Result) -> None:
    code = fd.stop()
    if code != 0:
        res.checks.append(f"frontdesk exit code {code} after SIGTERM (want 0)")
    for path in fd.logs if isinstance(fd, FrontdeskGroup) else [fd.log]:
        if "Traceback" in path.read_text(errors="replace"):
            res.checks.append(f"Traceback in {path}")


# --- the report ----------------------------------------------------------------------------------

def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(results: list[Result]) -> None:
    header = ["workload", "server", "client", "msgs/s", "p50 ms", "p99 ms", "processed-all s",
              "proc msgs/s", "ratio", "srv CPU", "cli CPU"]
    rows = [[r.workload, r.server, r.client, _f(r.rate, ".0f"), _f(r.p50_ms, ".2f"),
             _f(r.p99_ms, ".2f"),
             _f(r.processed_s, ".2f") if r.processed_floor_s is None
             else f">{r.processed_floor_s:.0f}", _f(r.processing_rate, ".0f"),
             _f(r.ratio, ".2f"), _f(r.server_cpu_send and 100 * r.server_cpu_send, ".0f") +
             ("%" if r.server_cpu_send is not None else ""),
             _f(r.client_cpu_send and 100 * r.client_cpu_send, ".0f") +
             ("%" if r.client_cpu_send is not None else "")] for r in results]
    widths = [max(len(h), *(len(row[k]) for row in rows)) for k, h in enumerate(header)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    print("  ".join(h.ljust(w) if k < 3 else h.rjust(w) for k, (h, w) in
                    enumerate(zip(header, widths, strict=True))))
    print(line)
    for row in rows:
        print("  ".join(v.ljust(w) if k < 3 else v.rjust(w) for k, (v, w) in
                        enumerate(zip(row, widths, strict=True))))
    print(line)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", "-n", type=int, default=5000, help="messages per run (5000)")
    p.add_argument("--connections", "-c", type=int, default=20, help="SMTP sessions (20)")
    p.add_argument("--quick", action="store_true", help="500 messages: a smoke check")
    p.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    p.add_argument("--profile", action="store_true",
                   help="run py-spy on frontdesk during its runs and summarise (costs CPU)")
    p.add_argument("--process-timeout", type=float, default=None, metavar="S",
                   help="stop waiting for frontdesk to process everything S seconds after "
                        "sending ends (60 on SQLite, 0 with --postgres-url; 0 waits until done)")
    p.add_argument("--no-acks", action="store_true",
                   help="frontdesk with [acknowledgement] enabled = false (ingest alone)")
    p.add_argument("--no-smtp-source", action="store_true", help="skip Postfix's smtp-source")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores)")
    p.add_argument("--postgres-url", nargs="?", const=os.environ.get(POSTGRES_ENV, ""),
                   metavar="URL",
                   help="run frontdesk on PostgreSQL instead (postgresql+asyncpg://user@host/db; "
                        f"alone: ${POSTGRES_ENV}); a fresh database per run, dropped after; "
                        "no bare server and no smtp-source in this mode")
    p.add_argument("--instances", choices=("1", "2", "1,2"), default="1,2", metavar="1|2|1,2",
                   help="with --postgres-url: frontdesk processes on the one database, the "
                        "client's sessions split between them (1,2: both, and the ratio)")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--ports", help=argparse.SUPPRESS)
    p.add_argument("--run-id", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        client_main(args)
        return 0
    n = 500 if args.quick else args.messages
    Frontdesk.acknowledgements = not args.no_acks
    c = min(args.connections, n)
    workloads = list(WORKLOADS) if args.workload == "all" else [args.workload]
    if args.postgres_url is not None:
        if not args.postgres_url.startswith("postgresql+asyncpg://"):
            p.error(f"--postgres-url: give postgresql+asyncpg://user@host/db (or set "
                    f"${POSTGRES_ENV} and pass --postgres-url alone)")
        if args.profile:
            p.error("--profile is for the SQLite mode")
        timeout = 0 if args.process_timeout is None else args.process_timeout
        return main_postgres(args.postgres_url, [int(k) for k in args.instances.split(",")],
                             workloads, n, c, timeout, args.no_acks, args.keep)
    if args.process_timeout is None:
        args.process_timeout = 60

    print(f"frontdesk SMTP ingest benchmark: {n} messages over {c} sessions per run")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]} "
          f"({sys.executable}), {os.uname().sysname} {os.uname().release}")
    print(f"acknowledgements: {'off (--no-acks)' if args.no_acks else 'on (the default)'}")
    print(f"code: {code_version()}; load average {os.getloadavg()[0]:.2f} "
          "(other work on the machine skews every figure)")
    tmp = Path(tempfile.mkdtemp(prefix="frontdesk-bench-"))
    results: list[Result] = []
    try:
        for workload in workloads:
            desc = WORKLOADS[workload][0]
            fd = Frontdesk(tmp / f"frontdesk-{workload}")
            print(f"\n[{workload}] {desc}: frontdesk (pid {fd.pid}) ...", flush=True)
            res = measure(fd, workload, n, c, tmp, profile=args.profile,
                          process_timeout=args.process_timeout)
            stop_frontdesk(fd, res)
            results.append(res)
            print(f"  avg message {res.avg_bytes or 0:.0f} bytes; sent at {_f(res.rate, '.0f')}/s, "
                  f"all processed after {_f(res.processed_s, '.2f')} s "
                  if res.processed_floor_s is None else
                  f"not all processed after {res.processed_floor_s:.0f} s "
                  f"({res.processed_at_send_end} of {n} processed when sending ended); "
                  f"frontdesk CPU while sending {_f((res.server_cpu_send or 0) * 100, '.0f')}%",
                  flush=True)
            bare = Bare(tmp / f"bare-{workload}")
            print(f"[{workload}] {desc}: bare aiosmtpd (pid {bare.pid}) ...", flush=True)
            bres = measure(bare, workload, n, c, tmp)
            bare.stop()
            results.append(bres)
            print(f"  sent at {_f(bres.rate, '.0f')}/s", flush=True)
            if res.rate and bres.rate:
                res.ratio = res.rate / bres.rate
        if "plain-2k" in workloads and not args.no_smtp_source:
            if Path(SMTP_SOURCE).exists():
                for make in (Frontdesk, Bare):
                    srv = make(tmp / f"smtp-source-{make.__name__.lower()}")
                    print(f"\n[plain-2k] {SMTP_SOURCE} (a new connection per message) "
                          f"against {srv.name} ...", flush=True)
                    sres = run_smtp_source(srv, n, c, [])
                    if isinstance(srv, Frontdesk):
                        stop_frontdesk(srv, sres)
                    else:
                        srv.stop()
                    results.append(sres)
                fd_src, bare_src = results[-2], results[-1]
                if fd_src.rate and bare_src.rate:
                    fd_src.ratio = fd_src.rate / bare_src.rate
            else:
                print(f"\n{SMTP_SOURCE} not found (Debian package postfix): its extra line is "
                      "skipped")
    finally:
        if args.keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    print("msgs/s: 250s / (first connect -> last 250); p50/p99: end of DATA -> 250;")
    print("processed-all: first connect -> journal has no pending row and messages == N;")
    print("ratio: frontdesk msgs/s / bare msgs/s; srv/cli CPU: share of one core while sending.\n")
    print_table(results)
    for r in results:
        for note in r.notes:
            print(f"note ({r.workload}, {r.server}, {r.client}): {note}")
    failed = [(r, check) for r in results for check in r.checks]
    for r, check in failed:
        print(f"CHECK FAILED ({r.workload}, {r.server}, {r.client}): {check}")
    verdicts = []
    for workload in workloads:
        fd_res = next(r for r in results if r.workload == workload and r.server == "frontdesk"
                      and r.client == "asyncio")
        ok = fd_res.ratio is not None and fd_res.ratio >= TARGET_RATIO
        verdicts.append(ok)
        print(f"target frontdesk >= {TARGET_RATIO} x bare, {workload}: "
              f"{'PASS' if ok else 'FAIL'} (ratio {_f(fd_res.ratio, '.2f')})")
    print(f"checks (250s, journal == messages == N, no failed rows, SIGTERM -> 0): "
          f"{'PASS' if not failed else 'FAIL'}")
    return 0 if all(verdicts) and not failed else 1


def main_postgres(url: str, instances: list[int], workloads: list[str], n: int, c: int,
                  process_timeout: float, no_acks: bool, keep: bool) -> int:
    """The PostgreSQL mode: one and/or two frontdesk processes on one fresh database each run."""
    from sqlalchemy.engine import make_url

    print(f"frontdesk SMTP ingest benchmark on PostgreSQL ({make_url(url)!r}): {n} messages "
          f"over {c} sessions per run, split between the instances")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]} "
          f"({sys.executable}), {os.uname().sysname} {os.uname().release}; "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"acknowledgements: {'off (--no-acks)' if no_acks else 'on (the default)'}")
    print(f"code: {code_version()}; load average {os.getloadavg()[0]:.2f} "
          "(other work on the machine skews every figure)")
    tmp = Path(tempfile.mkdtemp(prefix="frontdesk-bench-pg-"))
    results: list[Result] = []
    try:
        for workload in workloads:
            desc = WORKLOADS[workload][0]
            by_count: dict[int, Result] = {}
            for k in instances:
                group = FrontdeskGroup(tmp / f"pg-{workload}-x{k}", url, k)
                try:
                    print(f"\n[{workload}] {desc}: {k} frontdesk process(es) on one PostgreSQL "
                          f"database (pids {', '.join(str(m.pid) for m in group.members)}) ...",
                          flush=True)
                    res = measure(group, workload, n, c, tmp, process_timeout=process_timeout)
                    stop_frontdesk(group, res)
                finally:
                    group.drop()
                results.append(res)
                by_count[k] = res
                print(f"  sent at {_f(res.rate, '.0f')}/s, "
                      + (f"all processed after {_f(res.processed_s, '.2f')} s"
                         if res.processed_floor_s is None else
                         f"not all processed after {res.processed_floor_s:.0f} s")
                      + f"; frontdesk CPU while sending "
                        f"{_f((res.server_cpu_send or 0) * 100, '.0f')}%", flush=True)
            one, two = by_count.get(1), by_count.get(2)
            if one and two and one.rate and two.rate:
                two.ratio = two.rate / one.rate
    finally:
        if keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    print("msgs/s: 250s / (first connect -> last 250); p50/p99: end of DATA -> 250;")
    print("processed-all: first connect -> journal has no pending row and messages == N;")
    print("ratio: this row's msgs/s / one instance's msgs/s (how sending scales);")
    print("srv CPU: all instances' CPU while sending, as a share of one core; cli CPU: the "
          "client's.\n")
    print_table(results)
    for workload in workloads:
        rows = {r.server: r for r in results if r.workload == workload}
        one, two = rows.get("frontdesk PG x1"), rows.get("frontdesk PG x2")
        if one and two:
            send = (f"{two.rate / one.rate:.2f}" if one.rate and two.rate else "-")
            proc = (f"{two.processing_rate / one.processing_rate:.2f}"
                    if one.processing_rate and two.processing_rate else "-")
            print(f"scaling, {workload}: two instances / one = {send} (accepting), "
                  f"{proc} (processing into conversations)")
    for r in results:
        for note in r.notes:
            print(f"note ({r.workload}, {r.server}): {note}")
    failed = [(r, check) for r in results for check in r.checks]
    for r, check in failed:
        print(f"CHECK FAILED ({r.workload}, {r.server}): {check}")
    print("checks (250s, journal == messages == conversations == N, no failed rows, no second "
          "acknowledgement, SIGTERM -> 0, no traceback): "
          f"{'PASS' if not failed else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
