"""Outgoing webhooks end to end: customer mail over SMTP, staff actions in the store and on the
command line, and receivers on loopback that verify every delivery's Standard Webhooks signature:
which events go where, the body, retries with the same webhook-id, restarts, order within a
conversation, receivers that fail without holding up anything else, and the config's checks."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import select
from standardwebhooks import Webhook

from frontdesk.config.schema import EscalationLevel, WebhookConfig
from frontdesk.domain.conversations import add_staff_reply, get_conversation, iso, resolve
from frontdesk.storage.models import Outbox
from tests.fakes.smtp_sink import SmtpSink
from tests.support.helpers import (
    FakeClock,
    conversations,
    eventually,
    mail,
    processed,
    run_cli,
    send,
)

FRONTDESK = str(Path(sys.executable).parent / "frontdesk")


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes
    status: int
    verified: bool

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def type(self) -> str:
        return str(self.json["type"])


@dataclass
class Endpoint:
    """One receiver's URL on the loopback server: it verifies each request with its secret and
    answers the statuses in ``statuses`` in turn, then 200 (or 503 while ``down``)."""

    secret: str = field(default_factory=new_secret)
    statuses: list[int] = field(default_factory=list)
    down: bool = False
    replay_window: bool = True
    """False: check the signature over the header's timestamp however far it is from now (for
    tests that move the daemon's clock by hours)."""
    hits: list[Hit] = field(default_factory=list)

    def accepted(self) -> list[Hit]:
        return [h for h in self.hits if 200 <= h.status < 300]

    def types(self) -> list[str]:
        return [h.type for h in self.accepted()]


class Receivers:
    """An aiohttp server on 127.0.0.1 with one :class:`Endpoint` per path."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self.app = web.Application()
        self.app.router.add_post("/{name}", self._handle)
        self.runner = web.AppRunner(self.app)
        self.port = 0

    async def __aenter__(self) -> Receivers:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    def add(self, name: str, **kw: Any) -> Endpoint:
        self.endpoints[name] = Endpoint(**kw)
        return self.endpoints[name]

    def config(self, name: str, **kw: Any) -> WebhookConfig:
        return WebhookConfig(url=f"http://127.0.0.1:{self.port}/{name}", name=name,
                             secret=self.endpoints[name].secret, **kw)

    async def _handle(self, request: web.Request) -> web.Response:
        endpoint = self.endpoints[request.match_info["name"]]
        body = await request.read()
        headers = dict(request.headers)
        verified = signed(endpoint, headers, body)
        if endpoint.down:
            status, extra = 503, {"Retry-After": "2"}
        else:
            status, extra = (endpoint.statuses.pop(0) if endpoint.statuses else 200), {}
        endpoint.hits.append(Hit(headers, body, status, verified))
        if not verified:
            return web.Response(status=401, text="bad signature")
        return web.Response(status=status, headers=extra,
                            text="ok" if status < 300 else "we are having a bad day")


def signed(endpoint: Endpoint, headers: dict[str, str], body: bytes) -> bool:
    hook = Webhook(endpoint.secret)
    try:
        if endpoint.replay_window:
            hook.verify(body, headers)
            return True
        at = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
        return hook.sign(headers["webhook-id"], at, body) in headers["webhook-signature"].split()
    except Exception:  # noqa: BLE001 - recorded; the tests assert every hit verified
        return False


@pytest.fixture
def wall_clock() -> FakeClock:
    """A test clock starting at the real time: receivers check the webhook-timestamp against
    their own clock (five minutes' tolerance); the tests move it a few seconds at a time."""
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start(daemon_factory: Any, make_settings: Any, hooks: list[WebhookConfig],
                clock: Any, database_url: str | None = None, *,
                update: dict[str, Any] | None = None, **sections: Any) -> Any:
    settings = make_settings(database_url=database_url, **sections)
    settings = settings.model_copy(update={"webhooks": hooks, **(update or {})})
    return await daemon_factory(settings, **({"clock": clock} if clock is not None else {}))


async def customer_mail(d: Any, n: int = 1, **kw: Any) -> None:
    await send(d.email.smtp.port, mail(msgid=f"<w{n}@example.org>", **kw))
    await eventually(lambda: processed(d.store))


async def hits(endpoint: Endpoint, count: int, *, accepted: bool = True) -> bool:
    return len(endpoint.accepted() if accepted else endpoint.hits) >= count


async def rows(d: Any, **where: Any) -> list[Outbox]:
    async with d.store.reader() as s:
        query = select(Outbox).where(Outbox.kind == "webhook").order_by(Outbox.id)
        for key, value in where.items():
            query = query.where(getattr(Outbox, key) == value)
        return list((await s.execute(query)).scalars())


async def all_done(d: Any, count: int) -> list[Outbox] | None:
    found = await rows(d)
    return found if len(found) == count and all(r.state == "done" for r in found) else None


async def resolve_in_store(d: Any, clock: Any) -> None:
    async with d.store.session() as s:
        assert await resolve(s, await get_conversation(s, 1), actor="grace", now=clock())
    d.outbox.kick()


async def retry_now(d: Any, clock: Any, seconds: float = 5) -> None:
    clock.advance(seconds=seconds)
    d.outbox.kick()


# -- what is sent, and how ---------------------------------------------------------------------


async def test_customer_mail_sends_conversation_created_and_message_received(
        database_url: str, make_settings: Any, daemon_factory: Any, wall_clock: Any) -> None:
    async with Receivers() as rx:
        hook = rx.add("hooks")
        d = await start(daemon_factory, make_settings, [rx.config("hooks")], wall_clock,
                        database_url)
        arrived = iso(wall_clock())
        await customer_mail(d)
        await eventually(lambda: hits(hook, 2))
        assert all(h.verified for h in hook.hits)
        created, received = hook.hits
        assert [created.type, received.type] == ["conversation.created", "message.received"]
        body = received.json
        assert body["timestamp"] == arrived
        assert set(body) == {"type", "timestamp", "data"}
        conversation, message = body["data"]["conversation"], body["data"]["message"]
        assert conversation["reference"] == "FD-1" and conversation["status"] == "open"
        assert conversation["contact"]["name"] == "Ada Lovelace"
        assert message["direction"] == "in" and "where is my order" in message["text"]
        assert "message" not in created.json["data"]  # only message events carry one
        assert received.body == json.dumps(body, separators=(",", ":")).encode()  # compact
        for h in hook.hits:
            assert h.headers["webhook-id"].startswith("msg_")
            assert h.headers["webhook-timestamp"] == str(int(wall_clock().timestamp()))
            assert h.headers["webhook-signature"].startswith("v1,")
            assert h.headers["Content-Type"] == "application/json"
            assert h.headers["User-Agent"].startswith("frontdesk/")
        assert created.headers["webhook-id"] != received.headers["webhook-id"]
        [row1, row2] = await eventually(lambda: all_done(d, 2))
        assert row1.channel == "webhook:hooks" and row1.conversation_id == 1
        assert row1.idempotency_key == f"webhook:hooks:{row1.payload['event_id']}"
        assert row2.message_id is not None
        metrics = d.metrics.render().decode()
        assert 'frontdesk_webhook_deliveries_total{outcome="delivered",receiver="hooks"} 2.0' \
            in metrics


async def test_resolve_and_a_sent_staff_reply(database_url: str, make_settings: Any,
                                              daemon_factory: Any, wall_clock: Any) -> None:
    async with Receivers() as rx, SmtpSink() as sink:
        hook = rx.add("hooks")
        d = await start(daemon_factory, make_settings, [rx.config("hooks")], wall_clock,
                        database_url, email={"outbound": {"port": sink.port}})
        await customer_mail(d)
        async with d.store.session() as s:
            c = await get_conversation(s, 1)
            await add_staff_reply(s, c, "It left our warehouse today.", author="Grace",
                                  replies=d.replies, now=wall_clock())
        d.outbox.kick()
        await eventually(lambda: hits(hook, 3))
        assert len(sink.messages) == 1
        sent = hook.accepted()[2]
        assert sent.type == "message.sent"
        message = sent.json["data"]["message"]
        assert message["author"] == "staff" and message["delivery_status"] == "sent"
        assert message["text"] == "It left our warehouse today."
        await resolve_in_store(d, wall_clock)
        await eventually(lambda: hits(hook, 4))
        resolved = hook.accepted()[3]
        assert resolved.type == "conversation.resolved" and resolved.verified
        assert resolved.json["data"]["conversation"]["status"] == "resolved"
        assert "message" not in resolved.json["data"]


async def test_frontdesk_resolve_on_the_command_line_is_sent_by_the_daemon(
        tmp_path: Path, make_settings: Any, daemon_factory: Any) -> None:
    async with Receivers() as rx:
        hook = rx.add("hooks")
        config = rx.config("hooks")
        d = await start(daemon_factory, make_settings, [config], None)  # the real clock
        await customer_mail(d)
        await eventually(lambda: hits(hook, 2))
        path = tmp_path / "cli.toml"
        path.write_text(f'[database]\nurl = "{d.settings.database.url}"\n'
                        f'[daemon]\ndata_dir = "{tmp_path}/data"\n'
                        f'[[webhooks]]\nname = "hooks"\nurl = "{config.url}"\n'
                        f'secret = "{hook.secret}"\n')
        result = await asyncio.to_thread(
            subprocess.run, [FRONTDESK, "resolve", "FD-1", "--as", "grace", "-c", str(path)],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "FD-1 resolved" in result.stdout
        await eventually(lambda: hits(hook, 3))  # the daemon's next look at the outbox
        resolved = hook.accepted()[2]
        assert resolved.type == "conversation.resolved" and resolved.verified
        assert resolved.json["data"]["conversation"]["status"] == "resolved"


# -- when receivers fail -------------------------------------------------------------------------


async def test_an_outage_is_retried_with_the_same_webhook_id(
        database_url: str, tmp_path: Path, make_settings: Any, daemon_factory: Any,
        wall_clock: Any, capsys: Any) -> None:
    async with Receivers() as rx:
        hook = rx.add("hooks", statuses=[500])
        d = await start(daemon_factory, make_settings, [rx.config("hooks")], wall_clock,
                        database_url)
        await customer_mail(d)
        await eventually(lambda: hits(hook, 1, accepted=False))
        first = (await eventually(lambda: rows(d, attempts=1)))[0]
        assert first.state == "pending" and first.next_attempt_at > wall_clock()
        assert first.last_error == (f"127.0.0.1:{rx.port} answered 500 Internal Server Error "
                                    "(we are having a bad day)")
        path = tmp_path / "cli.toml"
        path.write_text(f'[database]\nurl = "{d.settings.database.url}"\n')
        code, out, _err = await run_cli(capsys, "outbox", "-c", str(path))
        assert code == 0
        assert "webhook" in out and "webhook:hooks" in out and "FD-1" in out
        assert f"127.0.0.1:{rx.port} answered 500 Internal Server Error" in out
        await retry_now(d, wall_clock)
        await eventually(lambda: hits(hook, 2))
        failed, again, received = hook.hits
        assert [h.status for h in hook.hits] == [500, 200, 200]
        assert all(h.verified for h in hook.hits)
        assert failed.type == again.type == "conversation.created"
        assert failed.headers["webhook-id"] == again.headers["webhook-id"]
        assert int(again.headers["webhook-timestamp"]) - \
            int(failed.headers["webhook-timestamp"]) == 5
        assert failed.body == again.body
        assert received.type == "message.received"
        await eventually(lambda: all_done(d, 2))
        await d.outbox.deliver_due()
        assert len(hook.hits) == 3  # each delivered once
        metrics = d.metrics.render().decode()
        assert 'frontdesk_webhook_deliveries_total{outcome="failed",receiver="hooks"} 1.0' \
            in metrics


async def test_a_restart_delivers_what_waited_and_drops_removed_receivers(
        database_url: str, make_settings: Any, daemon_factory: Any, wall_clock: Any) -> None:
    async with Receivers() as rx:
        hook = rx.add("hooks", down=True)
        old = rx.add("old", statuses=[500] * 10)
        d = await start(daemon_factory, make_settings, [rx.config("hooks"), rx.config("old")],
                        wall_clock, database_url)
        await customer_mail(d)
        await eventually(lambda: hits(hook, 1, accepted=False))
        [waiting] = await eventually(lambda: rows(d, channel="webhook:hooks", attempts=1))
        assert "answered 503 Service Unavailable" in (waiting.last_error or "")
        assert "it asks to wait 2 s" in (waiting.last_error or "")
        assert (waiting.next_attempt_at - wall_clock()).total_seconds() >= 2  # Retry-After
        d.request_stop()
        await d.stop()

        hook.down = False
        d2 = await start(daemon_factory, make_settings, [rx.config("hooks")], wall_clock,
                         database_url)
        await retry_now(d2, wall_clock)
        await eventually(lambda: hits(hook, 2))
        assert hook.types() == ["conversation.created", "message.received"]
        assert all(h.verified for h in hook.hits)
        assert hook.hits[0].headers["webhook-id"] == hook.hits[1].headers["webhook-id"]
        removed = await eventually(lambda: _failed(d2, "webhook:old", 2))
        assert [h.status for h in old.hits] == [500]  # tried once before the restart, not after
        assert all(r.last_error == "the webhook receiver 'old' is no longer configured "
                   "([[webhooks]]), so this cannot be sent" for r in removed)


async def _failed(d: Any, channel: str, count: int) -> list[Outbox] | None:
    found = await rows(d, channel=channel, state="failed")
    return found if len(found) == count else None


async def test_order_within_a_conversation_holds_through_retries(
        database_url: str, make_settings: Any, daemon_factory: Any, wall_clock: Any) -> None:
    async with Receivers() as rx:
        hook = rx.add("hooks", statuses=[500, 500])
        d = await start(daemon_factory, make_settings, [rx.config("hooks")], wall_clock,
                        database_url)
        await customer_mail(d)
        await eventually(lambda: hits(hook, 1, accepted=False))
        await customer_mail(d, 2, subject="Re: Order 1234 never arrived",
                            In_Reply_To="<w1@example.org>", References="<w1@example.org>")
        assert len(await conversations(d.store)) == 1
        await resolve_in_store(d, wall_clock)
        await eventually(lambda: rows(d, attempts=1))
        assert len(hook.hits) == 1  # the rest of the lane waits for its head
        await retry_now(d, wall_clock)
        await eventually(lambda: hits(hook, 2, accepted=False))
        await retry_now(d, wall_clock, seconds=10)
        await eventually(lambda: hits(hook, 4))
        assert [h.type for h in hook.hits] == [
            "conversation.created", "conversation.created", "conversation.created",
            "message.received", "message.received", "conversation.resolved"]
        assert [h.status for h in hook.hits] == [500, 500, 200, 200, 200, 200]
        first, second = (h.json["data"]["message"]["id"] for h in hook.accepted()[1:3])
        assert first < second


async def test_a_failing_receiver_holds_up_neither_another_nor_the_customer(
        database_url: str, make_settings: Any, daemon_factory: Any, wall_clock: Any) -> None:
    async with Receivers() as rx, SmtpSink() as sink:
        good = rx.add("good")
        port = closed_port()
        dead = WebhookConfig(url=f"http://127.0.0.1:{port}/x", name="dead",
                             secret=new_secret())
        d = await start(daemon_factory, make_settings, [dead, rx.config("good")], wall_clock,
                        database_url, email={"outbound": {"port": sink.port}})
        await customer_mail(d)
        await eventually(lambda: hits(good, 2))
        async with d.store.session() as s:
            await add_staff_reply(s, await get_conversation(s, 1), "On its way.",
                                  author="Grace", replies=d.replies, now=wall_clock())
        d.outbox.kick()
        await eventually(lambda: hits(good, 3))
        assert len(sink.messages) == 1  # the customer's reply went
        assert good.types() == ["conversation.created", "message.received", "message.sent"]
        stuck = await rows(d, channel="webhook:dead")
        assert [r.state for r in stuck] == ["pending"] * 3
        assert stuck[0].attempts >= 1 and stuck[1].attempts == 0  # its lane waits behind it
        assert (stuck[0].last_error or "").startswith(f"could not reach 127.0.0.1:{port}: ")


async def test_webhooks_are_queued_only_with_a_commit(database_url: str, make_settings: Any,
                                                       daemon_factory: Any,
                                                       wall_clock: Any) -> None:
    async with Receivers() as rx:
        rx.add("hooks")
        d = await start(daemon_factory, make_settings, [rx.config("hooks")], wall_clock,
                        database_url)
        await customer_mail(d)
        before = len(await rows(d))

        class Undone(Exception):
            pass

        with pytest.raises(Undone):
            async with d.store.session() as s:
                await resolve(s, await get_conversation(s, 1), actor="grace", now=wall_clock())
                raise Undone
        async with d.store.session() as s:
            c = await get_conversation(s, 1)
            with pytest.raises(Undone):
                async with s.begin_nested():
                    await resolve(s, c, actor="grace", now=wall_clock())
                    raise Undone
            await s.refresh(c)
            assert await resolve(s, c, actor="ada", now=wall_clock())
        queued = await rows(d)
        assert len(queued) == before + 1
        assert queued[-1].payload["type"] == "conversation.resolved"


async def test_a_receiver_gets_only_the_events_it_subscribed_to(
        make_settings: Any, daemon_factory: Any, wall_clock: Any) -> None:
    async with Receivers() as rx:
        hook = rx.add("hooks")
        d = await start(daemon_factory, make_settings,
                        [rx.config("hooks", events=["conversation.resolved"])], wall_clock)
        await customer_mail(d)
        assert await rows(d) == []  # nothing queued for what it did not ask for
        await resolve_in_store(d, wall_clock)
        await eventually(lambda: hits(hook, 1))
        assert [h.type for h in hook.hits] == ["conversation.resolved"]
        assert len(await rows(d)) == 1


async def test_sla_warning_escalation_and_rating(database_url: str, make_settings: Any,
                                                 daemon_factory: Any, wall_clock: Any) -> None:
    async with Receivers() as rx:
        hook = rx.add("hooks", replay_window=False)  # the clock moves an hour
        d = await start(daemon_factory, make_settings,
                        [rx.config("hooks", events=["sla.warning", "sla.escalated",
                                                    "rating.received"])],
                        wall_clock, database_url, scheduler={"enabled": True, "interval": "1h"},
                        acknowledgement={"enabled": False},
                        # at the breach, notifying nobody: sla.escalated fires all the same
                        update={"escalation": [EscalationLevel(after=timedelta(0), notify=[])]})
        await customer_mail(d)
        wall_clock.advance(minutes=45)  # 15 minutes before the first response is due
        await d.scheduler.sweep()
        wall_clock.advance(minutes=15)
        await d.scheduler.sweep()
        d.outbox.kick()
        await eventually(lambda: hits(hook, 2))
        warning, escalated = hook.accepted()
        assert (warning.type, escalated.type) == ("sla.warning", "sla.escalated")
        assert escalated.json["data"]["conversation"]["escalation_level"] == 1
        assert escalated.json["timestamp"] == iso(wall_clock())
        async with d.store.session() as s:
            c = await get_conversation(s, 1)
            await resolve(s, c, actor="grace", now=wall_clock())
            c.survey_sent_at = wall_clock()
        await customer_mail(d, 2, subject="Re: How did we do? [FD-1]", body="5",
                            In_Reply_To="<w1@example.org>")
        await eventually(lambda: hits(hook, 3))
        rated = hook.accepted()[2]
        assert rated.type == "rating.received"
        assert rated.json["data"]["conversation"]["rating"] == 5
        assert "message" not in rated.json["data"]
        assert all(h.verified for h in hook.hits)


async def test_410_gone_gives_up(make_settings: Any, daemon_factory: Any,
                                 wall_clock: Any) -> None:
    async with Receivers() as rx:
        hook = rx.add("hooks", statuses=[410, 410])
        d = await start(daemon_factory, make_settings, [rx.config("hooks")], wall_clock)
        await customer_mail(d)
        failed = await eventually(lambda: _failed(d, "webhook:hooks", 2))
        assert len(hook.hits) == 2 and all(r.attempts == 1 for r in failed)
        assert "answered 410 Gone" in (failed[0].last_error or "")
        assert "the receiver says the endpoint is gone" in (failed[0].last_error or "")


async def test_a_webhook_is_retried_past_the_outbox_attempts_until_taken(
        make_settings: Any, daemon_factory: Any, wall_clock: Any) -> None:
    """"Until a 2xx": where a reply gives up after daemon.outbox_max_attempts, a webhook goes on
    at the longest backoff."""
    async with Receivers() as rx:
        hook = rx.add("hooks", statuses=[500, 500, 500, 500])
        d = await start(daemon_factory, make_settings, [rx.config("hooks", events=[
            "conversation.created"])], wall_clock, daemon={"outbox_max_attempts": 2})
        await customer_mail(d)
        for attempt in range(1, 5):
            await eventually(lambda n=attempt: rows(d, attempts=n))
            [row] = await rows(d)
            assert row.state == "pending", row.last_error
            await retry_now(d, wall_clock, seconds=5)
        await eventually(lambda: hits(hook, 1))
        assert [h.status for h in hook.hits] == [500, 500, 500, 500, 200]
        await eventually(lambda: all_done(d, 1))


# -- configuration ---------------------------------------------------------------------------------


async def test_a_secret_without_whsec_is_a_config_error(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "frontdesk.toml"
    path.write_text('[[webhooks]]\nurl = "https://hooks.example.com/frontdesk"\n'
                    f'secret = "{base64.b64encode(secrets.token_bytes(32)).decode()}"\n')
    code, _out, err = await run_cli(capsys, "check", "-c", str(path))
    assert code == 1 and "Traceback" not in err
    assert "webhooks" in err and 'must be a Standard Webhooks secret: "whsec_"' in err
