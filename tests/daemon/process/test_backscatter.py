"""Acknowledgements are not a backscatter cannon: mail in over real SMTP to a running daemon,
acknowledgements out to a real SMTP relay on loopback.

Anyone can put a stranger's address in From. The stranger must not receive text the attacker
chose (a display name or subject full of URLs), must receive nothing when the mail server in
front says the From address is forged (DMARC or SPF fail in a trusted Authentication-Results),
and a flood of forged senders spread over many addresses stops at the global cap.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.daemon.process.test_scheduler import (
    FakeClock,
    at,
    events,
    mail_in,
    scheduler_settings,
    start,
    sweep,
)
from tests.fakes.smtp_sink import SmtpSink

ATTACKER_NAME = "WIN A PRIZE at http://evil.example/claim"
ATTACKER_SUBJECT = "Your invoice: http://evil.example/pay now"
TRUSTED = "mx.example.com"


@pytest.fixture
async def sink() -> Any:
    async with SmtpSink() as s:
        yield s


def _forged(**headers: str) -> dict[str, Any]:
    return {"frm": f'"{ATTACKER_NAME}" <victim@example.net>', "subject": ATTACKER_SUBJECT,
            **headers}


def _whole(relay: SmtpSink, i: int) -> str:
    return relay.messages[i][2].decode("utf-8", "replace")


async def test_an_unverified_sender_gets_only_our_own_words(
        make_settings: Any, daemon_factory: Any, sink: SmtpSink) -> None:
    """No trusted Authentication-Results: the acknowledgement still goes (a real customer
    needs it) but repeats neither the name nor the subject the sender wrote."""
    d = await start(daemon_factory, scheduler_settings(make_settings, sink),
                    FakeClock(at(2026, 11, 27, 10, 0)))
    await mail_in(d, **_forged())
    await sweep(d)
    assert len(sink.messages) == 1
    sent = sink.parsed(0)
    assert sent["Subject"] == "Re: your message [FD-1]"
    assert str(sent["To"]) == "victim@example.net"
    assert "Hello there," in sent.get_content()
    whole = _whole(sink, 0)
    assert "evil.example" not in whole and "PRIZE" not in whole and "invoice" not in whole


async def test_a_header_from_an_untrusted_server_counts_for_nothing(
        make_settings: Any, daemon_factory: Any, sink: SmtpSink) -> None:
    """The attacker writes "dmarc=pass" themselves under another authserv-id, and under the
    trusted one below the trusted server's own (topmost) header, which says nothing."""
    settings = scheduler_settings(make_settings, sink, email={"trusted_authserv_id": TRUSTED})
    d = await start(daemon_factory, settings, FakeClock(at(2026, 11, 27, 10, 0)))
    message = _forged(Authentication_Results="evil.example; dmarc=pass header.from=example.net")
    await mail_in(d, **message)
    await sweep(d)
    assert len(sink.messages) == 1
    assert "evil.example/claim" not in _whole(sink, 0)
    assert sink.parsed(0)["Subject"] == "Re: your message [FD-1]"


async def test_a_trusted_pass_is_greeted_by_name(
        make_settings: Any, daemon_factory: Any, sink: SmtpSink) -> None:
    settings = scheduler_settings(make_settings, sink, email={"trusted_authserv_id": TRUSTED})
    d = await start(daemon_factory, settings, FakeClock(at(2026, 11, 27, 10, 0)))
    await mail_in(d, Authentication_Results=f"{TRUSTED} (Postfix); dkim=pass (2048-bit key) "
                  "header.d=example.org header.s=mail; spf=softfail smtp.mailfrom=example.org")
    await sweep(d)
    sent = sink.parsed(0)
    assert sent["Subject"] == "Re: Order 1234 never arrived [FD-1]"
    assert "Hello Ada Lovelace," in sent.get_content()
    assert "Ada Lovelace" in str(sent["To"])


async def test_a_forged_sender_gets_no_acknowledgement(
        make_settings: Any, daemon_factory: Any, sink: SmtpSink) -> None:
    """DMARC (or SPF) fail per the trusted server: stored for staff to see, never answered
    automatically, and the reason is audited."""
    settings = scheduler_settings(make_settings, sink, email={"trusted_authserv_id": TRUSTED})
    d = await start(daemon_factory, settings, FakeClock(at(2026, 11, 27, 10, 0)))
    await mail_in(d, **_forged(Authentication_Results=f"{TRUSTED}; spf=pass "
                               "smtp.mailfrom=evil.example; dmarc=fail header.from=example.net"))
    await mail_in(d, frm="Bob <bob@example.net>", msgid="<m2@example.net>",
                  Authentication_Results=f"{TRUSTED}; spf=fail smtp.mailfrom=example.net")
    await sweep(d)
    assert sink.messages == []
    skipped = await events(d, "acknowledgement_skipped")
    assert len(skipped) == 2
    assert all("failed authentication" in e.data["reason"] for e in skipped)


async def test_the_global_cap_stops_a_flood_of_forged_senders(
        make_settings: Any, daemon_factory: Any, sink: SmtpSink) -> None:
    """Each forged address stays under its own limits; all of them together stop at
    ``acknowledgement.global_rate_limits``."""
    settings = scheduler_settings(make_settings, sink,
                                  acknowledgement={"global_rate_limits": ["3/1h"]})
    d = await start(daemon_factory, settings, FakeClock(at(2026, 11, 27, 10, 0)))
    for i in range(5):
        await mail_in(d, frm=f"victim{i}@example.net", msgid=f"<f{i}@example.net>",
                      subject=f"flood {i}")
    await sweep(d)
    assert len(sink.messages) == 3
    reasons = [e.data["reason"] for e in await events(d, "acknowledgement_skipped")]
    assert len(reasons) == 2 and all("global rate limit 3/1h" in r for r in reasons)


async def test_the_global_cap_counts_earlier_sweeps_and_the_batch_and_slides(
        database_url: str, make_settings: Any, daemon_factory: Any, sink: SmtpSink) -> None:
    """A sweep that acknowledges several new conversations at once counts the acknowledgements
    sent before it, within the cap's window, and its own: with "3/1h", two sent at 10:05 leave
    room for one of the three due at 10:20; an hour later there is room again."""
    clock = FakeClock(at(2026, 11, 27, 10, 0))
    settings = scheduler_settings(make_settings, sink, database_url=database_url,
                                  acknowledgement={"global_rate_limits": ["3/1h"],
                                                   "delay": "5m"})
    d = await start(daemon_factory, settings, clock)

    async def due_together(*senders: str) -> None:  # new conversations, then their sweep
        for sender in senders:
            await mail_in(d, frm=f"{sender}@example.net", msgid=f"<{sender}@example.net>",
                          subject=sender)
        clock.advance(minutes=5)
        await sweep(d)

    await due_together("early0", "early1")
    assert len(sink.messages) == 2
    clock.advance(minutes=10)
    await due_together("late0", "late1", "late2")
    assert len(sink.messages) == 3
    reasons = [e.data["reason"] for e in await events(d, "acknowledgement_skipped")]
    assert len(reasons) == 2 and all("global rate limit 3/1h" in r for r in reasons)
    clock.advance(minutes=50)  # 11:15: the two of 10:05 have left the window
    await due_together("next")
    assert len(sink.messages) == 4
    assert "next@example.net" in sink.messages[-1][1]
