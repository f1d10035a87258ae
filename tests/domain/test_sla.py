"""SLA arithmetic and the words customers read, without a daemon: the honest expected reply time
inside and outside business hours and across a holiday, clocks that pause and resume, policies,
survey answers, SMS segments and the config checks of templates and escalation levels."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from frontdesk.config.schema import SlaConfig
from frontdesk.daemon.process.registry import Settings
from frontdesk.daemon.process.scheduler import parse_rate_limits, parse_rating, slack_mention
from frontdesk.domain.business_hours import calendar_from_settings
from frontdesk.domain.notices import (
    check_template,
    choose,
    expectation,
    render,
    sms_segments,
)
from frontdesk.domain.sla import SlaEngine, SlaPolicies, SlaState

LONDON_HOURS = "Mon-Fri 09:00-12:30,13:30-17:30"


def calendar(hours: str = LONDON_HOURS, **kw: Any) -> Any:
    return calendar_from_settings(SlaConfig(business_hours=hours, timezone="Europe/London", **kw))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- the honest expected reply time ------------------------------------------------------------

def test_friday_evening_promises_monday() -> None:
    cal = calendar()
    now = utc(2026, 11, 27, 18, 0)  # Friday, after closing (GMT: London = UTC in November)
    due = cal.add(now, timedelta(hours=1))
    assert due == utc(2026, 11, 30, 10, 0)
    sentence, when = expectation(due, now, cal, "en")
    assert sentence == "We're closed for the weekend; you'll hear from us by Monday 10:00."
    assert when == "Monday 10:00"


def test_open_lunch_break_and_evening_wording() -> None:
    cal = calendar()
    monday_morning = utc(2026, 11, 23, 10, 0)
    due = cal.add(monday_morning, timedelta(hours=1))
    assert expectation(due, monday_morning, cal, "en")[0] == \
        "You'll hear from us by 11:00 today."
    lunch = utc(2026, 11, 23, 12, 45)
    due = cal.add(lunch, timedelta(hours=1))
    assert due == utc(2026, 11, 23, 14, 30)
    assert expectation(due, lunch, cal, "en")[0] == \
        "We're closed right now; you'll hear from us by 14:30 today."
    evening = utc(2026, 11, 24, 19, 0)  # Tuesday
    due = cal.add(evening, timedelta(hours=1))
    assert expectation(due, evening, cal, "en")[0] == \
        "We're closed for the day; you'll hear from us by 10:00 tomorrow."


def test_across_a_holiday() -> None:
    cal = calendar(holidays_country="GB")  # 25 Dec and the 28th (Boxing Day moved off Saturday)
    now = utc(2026, 12, 24, 18, 0)
    due = cal.add(now, timedelta(hours=1))
    assert due == utc(2026, 12, 29, 10, 0)
    assert expectation(due, now, cal, "en")[0] == \
        "We're closed for the holiday; you'll hear from us by Tuesday 10:00."
    extra = calendar(holidays=[date(2026, 12, 1)])
    monday_night = utc(2026, 11, 30, 20, 0)
    due = extra.add(monday_night, timedelta(hours=1))
    assert due == utc(2026, 12, 2, 10, 0)
    assert expectation(due, monday_night, extra, "en")[0] == \
        "We're closed for the holiday; you'll hear from us by Wednesday 10:00."


def test_other_languages_and_far_dates() -> None:
    cal = calendar()
    now = utc(2026, 11, 27, 18, 0)
    due = cal.add(now, timedelta(hours=1))
    assert expectation(due, now, cal, "de")[0] == \
        "Wir haben am Wochenende geschlossen; Sie hören bis Montag um 10:00 von uns."
    assert expectation(due, now, cal, "fr-CA")[1] == "lundi à 10:00"
    far = cal.add(now, timedelta(hours=60))
    assert expectation(far, now, cal, "en")[1] == "Wednesday 9 December 17:30"


# --- clocks --------------------------------------------------------------------------------------

def conversation(**kw: Any) -> Any:
    base = dict(status="open", channel="email", priority="normal", sla_state={},
                first_responded_at=None, last_staff_message_at=None,
                last_customer_message_at=None, updated_at=None, created_at=None,
                first_response_due_at=None, next_response_due_at=None, resolution_due_at=None,
                escalation_level=0, escalation_due_at=None, sla_policy=None)
    base.update(kw)
    return SimpleNamespace(**base)


def engine(**sla: Any) -> SlaEngine:
    settings = Settings.model_validate({"sla": {"business_hours": LONDON_HOURS,
                                                "timezone": "Europe/London", **sla},
                                        "escalation": [{"after": "0s"}, {"after": "1h"}]})
    return SlaEngine(settings.sla, calendar_from_settings(settings.sla), settings.escalation)


def test_response_clock_pauses_while_snoozed_and_resumes_with_the_rest() -> None:
    e = engine(first_response="1h", resolution="8h")
    t0 = utc(2026, 11, 23, 10, 0)
    c = conversation(last_customer_message_at=t0, updated_at=t0, created_at=t0)
    e.refresh(c, set(), t0, at=t0)
    assert c.first_response_due_at == utc(2026, 11, 23, 11, 0)
    assert c.resolution_due_at == utc(2026, 11, 24, 10, 30)  # 6h30 on Monday, 1h30 Tuesday
    assert c.escalation_due_at == utc(2026, 11, 23, 10, 45)  # the warning

    c.status, c.updated_at = "snoozed", utc(2026, 11, 23, 10, 20)
    e.refresh(c, set(), utc(2026, 11, 23, 10, 21))
    assert c.first_response_due_at is None and c.escalation_due_at is None
    clocks = SlaState.load(c.sla_state).clocks
    assert clocks["response"].consumed == 20 * 60 and not clocks["response"].running

    c.status, c.updated_at = "open", utc(2026, 11, 23, 12, 20)
    e.refresh(c, set(), c.updated_at)
    assert c.first_response_due_at == utc(2026, 11, 23, 14, 0)  # 10m before lunch, 30m after
    assert c.resolution_due_at == utc(2026, 11, 24, 12, 30)  # the rest ends at closing


def test_staff_reply_ends_the_response_clock_and_a_customer_message_starts_the_next() -> None:
    e = engine(first_response="1h", next_response="2h")
    t0 = utc(2026, 11, 23, 10, 0)
    c = conversation(last_customer_message_at=t0, updated_at=t0)
    e.refresh(c, set(), t0, at=t0)
    reply = utc(2026, 11, 23, 10, 30)
    c.first_responded_at = c.last_staff_message_at = reply
    c.status, c.updated_at = "pending", reply
    e.refresh(c, set(), reply)
    assert c.first_response_due_at == utc(2026, 11, 23, 11, 0)  # kept: what was promised
    assert c.next_response_due_at is None and c.escalation_due_at is None
    later = utc(2026, 11, 23, 16, 0)
    c.status, c.last_customer_message_at, c.updated_at = "open", later, later
    e.refresh(c, set(), later, at=later)
    assert c.next_response_due_at == utc(2026, 11, 24, 9, 30)  # 1h30 today, 30m tomorrow


def test_policies_by_channel_priority_and_tag() -> None:
    sla = SlaConfig(first_response="4h", policies=[
        {"name": "vip", "contact_tags": ["VIP"], "first_response": "15m"},
        {"name": "urgent-chat", "channels": ["sms", "telegram"], "priorities": ["urgent"],
         "first_response": "10m", "resolution": "2h"},
    ])
    policies = SlaPolicies(sla)
    assert policies.choose(channel="email", priority="normal", tags=set()).policy == "default"
    vip = policies.choose(channel="email", priority="normal", tags={"vip"})
    assert (vip.policy, vip.first_response, vip.next_response) == \
        ("vip", timedelta(minutes=15), timedelta(minutes=15))
    assert policies.choose(channel="sms", priority="high", tags=set()).policy == "default"
    urgent = policies.choose(channel="sms", priority="urgent", tags=set())
    assert (urgent.policy, urgent.resolution) == ("urgent-chat", timedelta(hours=2))


def test_a_new_priority_moves_the_due_time_but_keeps_the_clock() -> None:
    settings = Settings.model_validate({"sla": {"business_hours": "always", "timezone": "UTC",
                                                "first_response": "1h", "policies": [
                                                    {"name": "urgent", "priorities": ["urgent"],
                                                     "first_response": "10m"}]}})
    e = SlaEngine(settings.sla, calendar_from_settings(settings.sla), settings.escalation)
    t0 = utc(2026, 11, 23, 10, 0)
    c = conversation(last_customer_message_at=t0, updated_at=t0)
    e.refresh(c, set(), t0, at=t0)
    assert c.first_response_due_at == utc(2026, 11, 23, 11, 0) and c.sla_policy == "default"
    c.priority, c.updated_at = "urgent", utc(2026, 11, 23, 10, 2)
    e.refresh(c, set(), c.updated_at)
    assert c.first_response_due_at == utc(2026, 11, 23, 10, 10) and c.sla_policy == "urgent"
    assert SlaState.load(c.sla_state).clocks["response"].since == t0


# --- small pieces ----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "score"), [
    ("5", 5), (" 4. ", 4), ("1!", 1), ("5/5", 5), ("3\n\n-- \nAda Lovelace", 3),
    ("6", None), ("0", None), ("5 stars but slow", None), ("", None), ("12", None),
])
def test_survey_answers(text: str, score: int | None) -> None:
    assert parse_rating(text) == score


def test_sms_segments() -> None:
    assert sms_segments("a" * 160) == 1
    assert sms_segments("a" * 161) == 2
    assert sms_segments("[" * 80) == 1 and sms_segments("[" * 81) == 2  # extension: 2 each
    assert sms_segments("é" * 160) == 1  # é is GSM-7
    assert sms_segments("ł" * 70) == 1 and sms_segments("ł" * 71) == 2  # UCS-2
    for language in ("en", "de", "fr", "es"):
        template = choose("acknowledgement", "sms", language, "en", {})
        text = render(template.text, {"reference": "FD-1234567", "name": "",
                                      "expectation": expectation(
                                          utc(2026, 9, 30, 11, 30), utc(2026, 9, 18, 18, 0),
                                          calendar(), language)[0]})
        assert sms_segments(text) <= 2, (language, text)


def test_configured_templates_win_by_channel_then_chat_then_language() -> None:
    settings = Settings.model_validate({"acknowledgement": {"templates": {
        "chat": {"en": {"text": "Got it ({reference}). {expectation}"}},
        "telegram": {"de": {"text": "Angekommen ({reference}). {expectation}"}},
        "email": {"en": {"subject": "[{reference}] received", "text": "Hi {first_name}."}}}}})
    table = settings.acknowledgement.templates
    assert choose("acknowledgement", "telegram", "de-AT", "en", table).text.startswith("Angek")
    assert choose("acknowledgement", "sms", "de", "en", table).text.startswith("Got it")
    assert choose("acknowledgement", "email", "fr", "en", table).subject == "[{reference}] received"
    assert choose("survey", "email", "es", "en", {}).subject.startswith("¿Qué tal")


@pytest.mark.parametrize(("data", "words"), [
    ({"acknowledgement": {"templates": {"sms": {"en": {"text": "Hi {nme}"}}}}},
     "unknown placeholder {nme}"),
    ({"acknowledgement": {"templates": {"sms": {"en": {"text": "x" * 320}}}}},
     "SMS segments"),
    ({"acknowledgement": {"templates": {"fax": {"en": {"text": "x"}}}}}, "not a channel"),
    ({"sla": {"policies": [{"name": "x", "channels": ["fax"], "first_response": "1h"}]}},
     "sla.policies[0].channels: 'fax' is not a channel (email, sms, whatsapp, voice, telegram, "
     "web, form, messenger, instagram, phone, in_person, letter)"),
    ({"escalation": [{"after": "1h"}, {"after": "30m"}]}, "level 2 comes before level 1"),
    ({"escalation": [{"notify": ["email"]}]}, 'notify includes "email" but email is not set'),
    ({"escalation": [{"mention": "bob"}]}, "not a Slack mention"),
    ({"escalation": [{"sms": "555-1234"}]}, "E.164"),
    ({"sla": {"policies": [{"name": "vip", "contact_tags": ["vip"]}]}}, "sets no target"),
])
def test_config_errors_name_the_problem(data: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings.model_validate(data, context={"check_template": check_template})
    assert words in str(info.value)


def test_escalation_keys_keep_working_as_the_contract_shows() -> None:
    settings = Settings.model_validate({"escalation": [{"after": "1h", "notify": "slack"}]})
    [level] = settings.escalation
    assert level.after == timedelta(hours=1) and level.notify == ["slack"]
    inferred = Settings.model_validate({"escalation": [{"after": "0s", "channel_id": "C0MGR",
                                                        "sms": "+1 555 000 2222"}]}).escalation[0]
    assert inferred.notify == ["slack", "channel", "sms"] and inferred.sms == "+15550002222"


def test_mentions_and_rate_limits() -> None:
    assert slack_mention("U0GRACE") == "<@U0GRACE>"
    assert slack_mention("S0ONCALL") == "<!subteam^S0ONCALL>"
    assert slack_mention("@here") == "<!here>"
    assert parse_rate_limits(["10/10m", "100/10h"]) == [
        (10, timedelta(minutes=10), "10/10m"), (100, timedelta(hours=10), "100/10h")]
