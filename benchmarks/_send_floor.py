"""The sends of new conversations alone, with no store: a floor under issue 18's burst target.

Each new conversation of the burst benchmark costs three sends whatever the store does: its
Slack root post (the card), the acknowledgement's line in its thread, and the acknowledgement
mail. This client makes exactly those, through frontdesk's own clients (``SlackApi.post`` over
slack_sdk, ``EmailSender.send`` over aiosmtplib, the card and line built by the desk's own
block builders), to the benchmark's Slack fake and relay, as many at once per remote as the
outbox sends (``OutboxWorker.sends_per_remote``), and reports the conversations a second and
its own CPU per conversation. Nothing is read or written in a store, no outbox row is claimed or
marked: the daemon cannot process a burst faster than this, on the same machine.

Run by ``benchmarks.e2e_latency`` (a subprocess; prints one JSON line)::

    python -m benchmarks._send_floor --slack URL --token T --relay-port P [--count N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from datetime import UTC, datetime, timedelta

import aiohttp
from pydantic import SecretStr

from frontdesk.channels.email import OutboundConfig
from frontdesk.channels.email.sender import EmailSender
from frontdesk.config.schema import SlackConfig
from frontdesk.daemon.desk.api import SlackApi
from frontdesk.daemon.desk.blocks import Card, outbound_line, root_message
from frontdesk.daemon.process.outbox import OutboxWorker
from frontdesk.domain.messages import OutboundMessage

CHANNEL = "C0FLOOR"
ACK_TEXT = ("Hello,\n\nthank you for your message. We have received it and will answer by "
            "Tuesday 14:30 (reference {ref}).\n\nThe support team\n")
FIRST_TEXT = ("Hello, I ordered a blue kettle last week (order 1234) and it has not arrived. "
              "The tracking page says it left the warehouse on Monday. Could you check? ") * 8


def _card(n: int, now: datetime) -> Card:
    return Card(conversation_id=n, reference=f"FD-{n}", channel="email",
                subject=f"Order {n} never arrived", status="open", priority="normal",
                assignee=None, created_at=now, first_response_due_at=now + timedelta(hours=4),
                first_responded_at=None, snoozed_until=None, escalation_level=0,
                contact_name=f"Customer {n}", identities=(("email", f"c{n}@example.org"),),
                earlier=0, last_earlier=None, first_text=FIRST_TEXT,
                inbox_address="support@example.com")


async def run(slack_url: str, token: str, relay_port: int,
              count: int) -> dict[str, float]:
    slack = SlackApi(SlackConfig(bot_token=SecretStr(token), signing_secret=SecretStr("x"),
                                 channel_id=CHANNEL, api_base_url=slack_url,
                                 post_interval=timedelta(0)), lambda: datetime.now(UTC))
    # As the desk runs it: the SDK on one aiohttp session (SlackDesk.start).
    slack.client.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
    mail = OutboundConfig(host="127.0.0.1", port=relay_port, starttls="off",
                          from_="Support <support@example.com>")
    sender = EmailSender(mail, hostname="frontdesk.test")
    lanes = OutboxWorker.sends_per_remote
    to_slack, to_relay = asyncio.Semaphore(lanes), asyncio.Semaphore(lanes)

    async def conversation(n: int) -> None:
        now = datetime.now(UTC)
        ack = ACK_TEXT.format(ref=f"FD-{n}")
        text, blocks = root_message(_card(n, now))
        async with to_slack:
            ts, _channel = await slack.post(CHANNEL, text=text, blocks=blocks, paced=True,
                                            metadata={"event_type": "frontdesk_conversation",
                                                      "event_payload": {"conversation_id": n}})
        async with to_relay:
            await sender.send(OutboundMessage(
                channel="email", to_address=f"c{n}@example.org", to_name=f"Customer {n}",
                text=ack, subject=f"Re: Order {n} never arrived", automated=True,
                conversation_reference=f"FD-{n}", in_reply_to=f"m{n}@example.org",
                references=(f"m{n}@example.org",)))
        async with to_slack:
            await slack.post(CHANNEL, thread_ts=ts, paced=True, text=outbound_line(
                "Automatic reply", "system", "email", ack, reference=f"FD-{n}",
                address=f"c{n}@example.org"))

    await slack.sign_in()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    # At most as many conversations under way as the outbox claims in a round.
    window = asyncio.Semaphore(OutboxWorker.batch_size)

    async def one(n: int) -> None:
        async with window:
            await conversation(n)

    await asyncio.gather(*(one(n) for n in range(1, count + 1)))
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    await sender.close()
    await slack.client.session.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"count": count, "seconds": seconds, "rate": count / seconds,
            "cpu_ms": cpu / count * 1000, "lanes": lanes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slack", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--relay-port", type=int, required=True)
    p.add_argument("--count", type=int, default=2000)
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args.slack, args.token, args.relay_port, args.count))))


if __name__ == "__main__":
    main()
