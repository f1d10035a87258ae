"""Three real ``frontdesk run`` processes on one PostgreSQL database, one of them killed with
SIGKILL in the middle of the traffic (issue 7).

3,000 customer messages (FRONTDESK_CLUSTER_MESSAGES, as .ci/run sets it; 600 by default) arrive
over SMTP (spread over the three instances' SMTP servers), signed
Twilio webhooks (spread over their HTTP servers) and Telegram (getUpdates, which only the leader
polls). A sender whose instance dies retries on another one, as an MTA or Twilio would. In the
middle, the instance leading Telegram polling is killed with SIGKILL. Afterwards:

- every message is stored exactly once, nothing is left pending or failed in the journal;
- every conversation has exactly one Slack root message at the fake, and one acknowledgement
  (at the SMTP sink, the Twilio fake or the Telegram fake);
- the Telegram leader moved to a surviving instance, which resumed from the stored
  offset (the updates the dead leader fetched but did not commit are not lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.fakes.slack import BOT_TOKEN as SLACK_BOT_TOKEN
from tests.fakes.slack import SIGNING_SECRET, FakeSlack
from tests.fakes.smtp_sink import SmtpSink
from tests.fakes.telegram import BOT_TOKEN as TELEGRAM_TOKEN
from tests.fakes.telegram import FakeTelegram
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, FakeTwilio

OURS = "+15550001111"
SUPPORT_CHANNEL = "C0SUPPORT"
# The figure is 3,000 (.ci/run sets it); a plain `make test` sends 600 to stay quick.
MESSAGES = int(os.environ.get("FRONTDESK_CLUSTER_MESSAGES", "600"))
N_EMAIL = N_SMS = N_TELEGRAM = MESSAGES // 3
SMS_SENDERS = TELEGRAM_USERS = max(1, MESSAGES // 30)  # ten messages each
INSTANCES = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _executable() -> str:
    candidate = Path(sys.executable).parent / "frontdesk"
    return str(candidate) if candidate.exists() else "frontdesk"


class Instance:
    def __init__(self, index: int, root: Path, database_url: str, slack: FakeSlack,
                 twilio: FakeTwilio, telegram: FakeTelegram, sink: SmtpSink) -> None:
        self.index = index
        self.http_port, self.smtp_port = _free_port(), _free_port()
        self.dir = root / f"instance-{index}"
        self.dir.mkdir()
        self.config = self.dir / "frontdesk.toml"
        self.config.write_text(f"""
[database]
url = "{database_url}"
leader_retry = "1s"
leader_heartbeat = "1s"

[http]
listen = "127.0.0.1:{self.http_port}"
public_url = "{PUBLIC_URL}"

[email]
inbox_addresses = ["support@example.com"]

[email.smtp_server]
listen = "127.0.0.1:{self.smtp_port}"
hostname = "mx{index}.frontdesk.test"

[email.outbound]
host = "127.0.0.1"
port = {sink.port}
starttls = "off"
from = "Support <support@example.com>"

[twilio]
account_sid = "{ACCOUNT_SID}"
auth_token = "{AUTH_TOKEN}"
sms_from = "{OURS}"
api_base_url = "{twilio.base_url}"

[telegram]
bot_token = "{TELEGRAM_TOKEN}"
api_base_url = "{telegram.base_url}"
poll_timeout = "1s"

[slack]
bot_token = "{SLACK_BOT_TOKEN}"
signing_secret = "{SIGNING_SECRET}"
channel_id = "{SUPPORT_CHANNEL}"
api_base_url = "{slack.base_url}"
post_interval = "0s"

[sla]
business_hours = "always"
timezone = "UTC"
first_response = "4h"

[acknowledgement]
rate_limits = ["100/1h"]
global_rate_limits = ["100000/10m"]   # thousands of new customers at once, on purpose

[scheduler]
interval = "1s"

[daemon]
data_dir = "{self.dir / 'data'}"
log_level = "info"
outbox_poll = "1s"
outbox_lease = "30s"
outbox_retry_initial = "1s"
outbox_retry_max = "2s"
shutdown_timeout = "10s"
""")
        self.log = open(self.dir / "frontdesk.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [_executable(), "run", "-c", str(self.config)], stdin=subprocess.DEVNULL,
            stdout=self.log, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("FRONTDESK_")})

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        code = None
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        self.log.close()
        return code

    def logs(self) -> str:
        return (self.dir / "frontdesk.log").read_text(errors="replace")

    async def get(self, session: aiohttp.ClientSession, path: str) -> tuple[int, str]:
        async with session.get(f"http://127.0.0.1:{self.http_port}{path}",
                               timeout=aiohttp.ClientTimeout(total=5)) as r:
            return r.status, await r.text()

    async def leads(self, session: aiohttp.ClientSession, consumer: str) -> bool:
        """True if this instance's /metrics says it holds the lock of ``consumer``."""
        try:
            _, body = await self.get(session, "/metrics")
        except (aiohttp.ClientError, TimeoutError):
            return False
        for line in body.splitlines():
            if line.startswith("frontdesk_leader{") and f'consumer="{consumer}' in line:
                return float(line.rsplit(" ", 1)[1]) == 1.0
        return False


async def _wait(check: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``check`` (a function, sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


async def _progressing(measure: Any, target: float, what: str, *, stall: float = 120.0,
                       cap: float = 1200.0) -> None:
    """Wait until ``measure()`` (sync or async, a number) reaches ``target``. Slowness is not a
    failure (a loaded machine); a stall is: no progress for ``stall`` seconds."""
    began = last_change = time.monotonic()
    best: float | None = None
    while True:
        value = measure()
        if inspect.isawaitable(value):
            value = await value
        if value >= target:
            return
        now = time.monotonic()
        if best is None or value > best:
            best, last_change = value, now
        if now - last_change > stall or now - began > cap:
            raise AssertionError(f"{what}: stuck at {value} of {target} "
                                 f"after {now - began:.0f} s")
        await asyncio.sleep(0.5)


def _email(i: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Customer {i} <customer{i}@example.net>"
    msg["To"] = "support@example.com"
    msg["Subject"] = f"Order {10000 + i} question"
    msg["Message-ID"] = f"<cluster-{i}@example.net>"
    msg.set_content(f"Hello, this is customer {i}: where is order {10000 + i}?")
    return msg


async def _send_emails(instances: list[Instance], progress: Counter[str]) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(N_EMAIL):
        queue.put_nowait(i)

    async def worker(w: int) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            for attempt in range(60):  # like an MTA: on any failure, another MX, later
                target = instances[(i + w + attempt) % len(instances)]
                if not target.alive:
                    continue
                try:
                    await aiosmtplib.send(_email(i), hostname="127.0.0.1", port=target.smtp_port,
                                          sender=f"customer{i}@example.net",
                                          recipients=["support@example.com"], timeout=10,
                                          start_tls=False)
                    progress["email"] += 1
                    break
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    await asyncio.sleep(0.2)
            else:
                raise AssertionError(f"email {i} was never accepted")

    await asyncio.gather(*(worker(w) for w in range(6)))


async def _send_sms(instances: list[Instance], twilio: FakeTwilio,
                    progress: Counter[str]) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(N_SMS):
        queue.put_nowait(i)
    url = PUBLIC_URL + "/webhooks/twilio/sms"

    async def worker(w: int, session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            form = twilio.inbound(f"Text {i}: my parcel number {i} is late",
                                  sender=f"+1555300{i % SMS_SENDERS:04d}",
                                  message_sid=f"SM{i:032x}")
            headers = {"X-Twilio-Signature": twilio.signature(url, form)}
            for attempt in range(60):  # Twilio retries a failed webhook
                target = instances[(i + w + attempt) % len(instances)]
                if not target.alive:
                    continue
                try:
                    async with session.post(
                            f"http://127.0.0.1:{target.http_port}/webhooks/twilio/sms",
                            data=form, headers=headers,
                            timeout=aiohttp.ClientTimeout(total=10)) as r:
                        await r.read()
                        if r.status == 200:
                            progress["sms"] += 1
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.2)
            else:
                raise AssertionError(f"SMS {i} was never accepted")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(w, session) for w in range(6)))


async def _send_telegram(telegram: FakeTelegram, progress: Counter[str]) -> None:
    for i in range(N_TELEGRAM):
        user = 700_000 + i % TELEGRAM_USERS
        await telegram.push(telegram.message_update(user, f"Telegram {i}: hello from {user}",
                                                    first_name=f"User{user}"))
        progress["telegram"] += 1
        if i % 10 == 9:
            await asyncio.sleep(0.05)


async def _scalar(engine: Any, sql: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar()


async def _rows(engine: Any, sql: str) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql))).all())


async def test_three_instances_one_killed_lose_nothing_and_send_once(
        postgres_url: str, tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        slack = FakeSlack()
        await slack.start()
        stack.push_async_callback(slack.stop)
        twilio = await stack.enter_async_context(FakeTwilio())
        telegram = await stack.enter_async_context(FakeTelegram())
        sink = SmtpSink()
        await sink.start()
        stack.push_async_callback(sink.stop)
        instances = [Instance(i, tmp_path, postgres_url, slack, twilio, telegram, sink)
                     for i in range(INSTANCES)]
        for instance in instances:
            instance.start()
            stack.callback(instance.stop)
        engine = create_async_engine(postgres_url, poolclass=NullPool)
        stack.push_async_callback(engine.dispose)
        http = await stack.enter_async_context(aiohttp.ClientSession())

        answers: dict[int, str] = {}

        async def all_ready() -> bool:
            for instance in instances:
                assert instance.alive, instance.logs()[-3000:]
                try:
                    status, body = await instance.get(http, "/readyz")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, body = 0, repr(exc)
                answers[instance.index] = body
                if status != 200:
                    return False
            return True

        try:
            await _wait(all_ready, 60, "three instances ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: /readyz said {answers}") from None
        tg_consumer = "telegram"

        async def telegram_leader() -> Instance | None:
            leaders = [i for i in instances if i.alive and await i.leads(http, tg_consumer)]
            return leaders[0] if len(leaders) == 1 else None

        first_leader = await _wait(telegram_leader, 30, "one Telegram leader")

        began = time.monotonic()

        def phase(what: str) -> None:
            print(f"  {time.monotonic() - began:6.1f} s  {what}", flush=True)

        progress: Counter[str] = Counter()
        senders = asyncio.gather(_send_emails(instances, progress),
                                 _send_sms(instances, twilio, progress),
                                 _send_telegram(telegram, progress))
        total = N_EMAIL + N_SMS + N_TELEGRAM
        await _wait(lambda: sum(progress.values()) >= total // 2, 300,
                    "half of the traffic sent", interval=0.05)
        assert first_leader.proc is not None
        killed_pid = first_leader.proc.pid
        first_leader.kill()
        killed_at = time.monotonic()
        # What the dead instance had claimed may have been on the wire when it died: the one
        # case where a send can repeat (DESIGN: a crash between send and mark). Noted now,
        # before the lease runs out and another instance takes those rows.
        in_doubt = await _rows(engine, "SELECT kind, conversation_id, CAST(payload AS TEXT) "
                                       "FROM outbox WHERE state = 'pending' AND claimed_by "
                                       f"LIKE '%:{killed_pid}:%'")
        new_leader = await _wait(telegram_leader, 30, "a new Telegram leader", interval=0.1)
        took_over = time.monotonic() - killed_at
        assert new_leader is not first_leader
        await senders
        phase("all sent")
        survivors = [i for i in instances if i.alive]
        assert len(survivors) == INSTANCES - 1

        async def stored() -> int:
            n = await _scalar(engine, "SELECT count(*) FROM messages WHERE direction = 'in'")
            pending = await _scalar(
                engine, "SELECT count(*) FROM inbound_journal WHERE state = 'pending'")
            return int(n) if pending == 0 else min(int(n), total - 1)

        await _progressing(stored, total, "every message stored")
        phase("every message stored")

        # Stored once: one message per remote id, none failed, none lost.
        assert await _scalar(engine, "SELECT count(*) FROM messages WHERE direction = 'in'") \
            == total
        assert await _scalar(engine, "SELECT count(*) FROM inbound_journal") == total
        failed = await _rows(engine, "SELECT channel, error FROM inbound_journal "
                                     "WHERE state = 'failed' ORDER BY id")
        assert failed == [], f"{len(failed)} dead letters, e.g. {failed[:3]}"
        by_channel = dict(await _rows(engine, "SELECT channel, count(*) FROM messages "
                                              "WHERE direction = 'in' GROUP BY channel"))
        assert by_channel == {"email": N_EMAIL, "sms": N_SMS, "telegram": N_TELEGRAM}
        expected_conversations = N_EMAIL + SMS_SENDERS + TELEGRAM_USERS
        conversations = await _scalar(engine, "SELECT count(*) FROM conversations")
        assert conversations == expected_conversations

        # One Slack root per conversation, and one acknowledgement per conversation.
        def roots() -> Counter[str]:
            return Counter(str(((m.get("metadata") or {}).get("event_payload") or {})
                               .get("reference") or m["ts"])
                           for m in slack.messages
                           if m["channel"] == SUPPORT_CHANNEL and not m.get("thread_ts"))

        await _progressing(lambda: len(roots()), expected_conversations,
                           "a Slack root per conversation")
        phase("a Slack root per conversation")

        def acknowledgements() -> Counter[str]:
            seen: Counter[str] = Counter()
            for _, rcpt, _ in sink.messages:
                seen[f"email:{rcpt[0]}"] += 1
            for form in twilio.messages:
                seen[f"sms:{form['To']}"] += 1
            for sent in telegram.sent:
                seen[f"telegram:{sent['chat_id']}"] += 1
            return seen

        await _progressing(lambda: len(acknowledgements()), expected_conversations,
                           "an acknowledgement per conversation")
        phase("an acknowledgement per conversation")
        await asyncio.sleep(3)  # anything sent twice would show up by now
        # Sent once, except what was in flight in the killed instance (at most once more).
        doubt_roots = {f"FD-{conversation}" for kind, conversation, _ in in_doubt
                       if kind == "slack"}
        doubt_payloads = " ".join(payload for _, _, payload in in_doubt)

        def repeats() -> tuple[list[str], list[str]]:
            return ([k for k, n in roots().items()
                     if n > 2 or (n == 2 and k not in doubt_roots)],
                    [k for k, n in acknowledgements().items()
                     if n > 2 or (n == 2 and json.dumps(k.split(":", 1)[1]) not in doubt_payloads)])

        assert repeats() == ([], [])
        assert len(roots()) == expected_conversations
        assert len(acknowledgements()) == expected_conversations
        recorded = await _scalar(engine, "SELECT count(*) FROM acknowledgements")
        assert recorded == expected_conversations

        # Nothing is left to send, and the survivors stop cleanly.
        async def outbox_left() -> int:
            return -int(await _scalar(engine, "SELECT count(*) FROM outbox "
                                              "WHERE state = 'pending'"))

        try:
            await _progressing(outbox_left, 0, "everything sent")
            phase("outbox drained")
        except AssertionError as exc:
            left = await _rows(engine, "SELECT kind, state, count(*), min(next_attempt_at), "
                                       "max(attempts), min(last_error) FROM outbox "
                                       "WHERE state <> 'done' GROUP BY kind, state")
            raise AssertionError(f"{exc}: {left}") from None
        failed_sends = await _rows(engine, "SELECT kind, last_error FROM outbox "
                                           "WHERE state = 'failed'")
        assert failed_sends == []
        # Draining sent nothing again: still each once, or twice only for what the killed
        # instance had in flight (the later checks used to forget that exception).
        assert repeats() == ([], [])
        print(f"\nTelegram leader moved from instance {first_leader.index} to "
              f"{new_leader.index} in {took_over:.1f} s")
        for instance in survivors:
            assert instance.stop() == 0, instance.logs()[-3000:]
