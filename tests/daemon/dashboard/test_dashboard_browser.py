"""The dashboard in a real Chromium (Playwright): signing in with a token, the refusal without
one and with a revoked one, the cookie's flags, the charts and their tables for the seeded
conversations, the filters, the summary against ``build_report``, hostile names shown as text,
and signing out.

``FRONTDESK_SCREENSHOTS=1`` also saves ``docs/dashboard.png`` (the README shows it) from a
fuller store: two months of conversations on five channels.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from frontdesk.domain.report import Filters, build_report
from tests.daemon.dashboard.conftest import NOW, base_of, make_token, revoke
from tests.support.browser import chromium, skip_reason
from tests.support.seed_figures import Seed, seed

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

CHARTS = ("conversations-per-day", "first-response", "sla-met", "csat", "tags", "backlog")
SCREENSHOT = Path(__file__).resolve().parents[3] / "docs" / "dashboard.png"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


async def new_page(browser: Any) -> tuple[Any, Any]:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    return context, await context.new_page()


async def sign_in(page: Any, base: str, token: str, query: str = "") -> Any:
    from playwright.async_api import expect

    response = await page.goto(f"{base}/dashboard{query}")
    assert response.status == 401
    await expect(page.locator('form[data-form="sign-in"]')).to_be_visible()
    await page.locator("#token").fill(token)
    async with page.expect_navigation():
        await page.locator('form[data-form="sign-in"] button').click()
    return page


async def summary(page: Any) -> dict[str, Any]:
    figures = page.locator("[data-figure]")
    out = {}
    for i in range(await figures.count()):
        element = figures.nth(i)
        out[await element.get_attribute("data-figure")] = json.loads(
            await element.get_attribute("data-value"))
    return out


async def cell(page: Any, chart: str, row: str, column: str) -> str:
    locator = page.locator(f'[data-chart="{chart}"] tr[data-row="{row}"] '
                           f'[data-column="{column}"]')
    return str(await locator.text_content()).strip()


async def report_of(daemon: Any, days: int, channel: str | None = None,
                    tag: str | None = None) -> dict[str, Any]:
    async with daemon.store.reader() as s:
        return await build_report(s, since=timedelta(days=days), now=daemon.clock(),
                                  calendar=daemon.sla.calendar,
                                  filters=Filters(channel=channel, tag=tag))


async def test_sign_in_charts_filters_and_sign_out(seeded: Any, browser: Any) -> None:
    from playwright.async_api import expect

    base = base_of(seeded)
    token = await make_token(seeded.store, "team-lead")
    context, page = await new_page(browser)
    assert await page.locator("[data-figure]").count() == 0
    await sign_in(page, base, token)
    await expect(page.locator("[data-signed-in]")).to_have_text("team-lead")

    [cookie] = await context.cookies()
    assert cookie["name"] == "frontdesk_dashboard"
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/dashboard" and cookie["secure"] is False  # plain http here
    assert token not in cookie["value"] and token.split("_", 2)[2] not in cookie["value"]

    # the last 30 days by default; the summary is build_report's, number for number
    shown = await summary(page)
    report = await report_of(seeded, 30)
    assert shown["conversations"] == 8
    assert shown == {key: report["overall"][key] for key in shown}
    assert len(shown) >= 10

    for chart in CHARTS:
        section = page.locator(f'[data-chart="{chart}"]')
        await expect(section.locator("svg.chart")).to_be_visible()
        assert await section.locator("table tbody tr").count() > 0
    # days and weeks are New York's (sla.timezone)
    assert await cell(page, "conversations-per-day", "2026-11-19", "telegram") == "1"
    assert await cell(page, "conversations-per-day", "2026-11-20", "total") == "0"
    assert await cell(page, "first-response", "2026-11-02", "median") == "1h15m"
    assert await cell(page, "first-response", "2026-11-02", "p90") == "1h51m"
    assert await cell(page, "sla-met", "2026-11-02", "share") == "50%"
    assert await cell(page, "csat", "2026-11-02", "average") == "3.5"
    assert await cell(page, "csat", "2026-11-16", "average") == "4"
    assert await cell(page, "tags", "refund", "total") == "4"
    assert await cell(page, "tags", "refund", "2026-11-02") == "2"
    assert await cell(page, "backlog", ">7d", "total") == "3"
    assert await cell(page, "backlog", "3–7d", "pending") == "1"
    rows = page.locator('[data-chart="tags"] tbody tr')
    assert [await rows.nth(i).get_attribute("data-row") for i in range(await rows.count())] == \
        ["refund", "login", "shipping"]

    # the filters: a channel, then a tag too, then a shorter period
    await page.locator('select[name="channel"]').select_option("email")
    async with page.expect_navigation():
        await page.locator('form[data-form="filters"] button').click()
    assert "channel=email" in page.url
    assert (await summary(page))["conversations"] == 5
    await page.locator('input[name="tag"]').fill("refund")
    async with page.expect_navigation():
        await page.locator('form[data-form="filters"] button').click()
    shown = await summary(page)
    assert shown["conversations"] == 3
    assert shown == {k: v for k, v in (await report_of(seeded, 30, "email", "refund"))[
        "overall"].items() if k in shown}
    assert await cell(page, "conversations-per-day", "2026-11-19", "total") == "0"
    await page.locator('select[name="since"]').select_option("7d")
    async with page.expect_navigation():
        await page.locator('form[data-form="filters"] button').click()
    shown = await summary(page)
    assert shown["conversations"] == 2  # the 18th and the 23rd
    assert shown == {k: v for k, v in (await report_of(seeded, 7, "email", "refund"))[
        "overall"].items() if k in shown}
    assert await page.locator('[data-chart="backlog"] tr[data-row=">7d"] '
                              '[data-column="total"]').text_content() == "1"

    # signing out: the page is the sign-in form again, with no figures
    async with page.expect_navigation():
        await page.locator('form[data-form="sign-out"] button').click()
    await expect(page.locator('form[data-form="sign-in"]')).to_be_visible()
    assert await page.locator("[data-figure]").count() == 0
    assert await context.cookies() == []
    response = await page.goto(f"{base}/dashboard")
    assert response.status == 401


async def test_refused_without_a_token_and_with_a_revoked_one(seeded: Any,
                                                              browser: Any) -> None:
    from playwright.async_api import expect

    base = base_of(seeded)
    _, page = await new_page(browser)
    response = await page.goto(f"{base}/dashboard?since=7d")
    assert response.status == 401
    assert await page.locator("[data-chart], [data-figure]").count() == 0
    await page.locator("#token").fill("fdt_0123456789ab_" + "A" * 43)
    async with page.expect_navigation():
        await page.locator('form[data-form="sign-in"] button').click()
    await expect(page.locator("[data-error]")).to_contain_text("not valid")
    assert await page.locator("[data-figure]").count() == 0

    token = await make_token(seeded.store, "temp", scope="write")
    await sign_in(page, base, token, "?since=7d")
    assert "since=7d" in page.url  # back to the filters asked for
    await expect(page.locator('[data-figure="conversations"]')).to_be_visible()
    await revoke(seeded.store, "temp")
    response = await page.reload()
    assert response.status == 401
    await expect(page.locator("[data-error]")).to_contain_text("session has ended")
    assert await page.locator("[data-figure]").count() == 0
    await page.locator("#token").fill(token)
    async with page.expect_navigation():
        await page.locator('form[data-form="sign-in"] button').click()
    await expect(page.locator("[data-error]")).to_contain_text("not valid")
    assert await page.locator("[data-figure]").count() == 0


async def test_tag_and_channel_names_are_shown_as_text(seeded: Any, browser: Any) -> None:
    hostile = '<img src=x onerror="window.__pwned=1">'
    await seed(seeded.store, [Seed(NOW - timedelta(hours=2), "<i>sms</i>", [hostile])])
    token = await make_token(seeded.store, "lead")
    _, page = await new_page(browser)
    await sign_in(page, base_of(seeded), token)
    assert await page.locator("main img, main i").count() == 0
    assert await page.evaluate("window.__pwned === undefined")
    texts = await page.locator('[data-chart="tags"] tbody th').all_text_contents()
    assert hostile in texts
    legend = await page.locator('[data-chart="conversations-per-day"] .legend').text_content()
    assert "<i>sms</i>" in str(legend)


def _busy_month(rng: random.Random) -> list[Seed]:
    """Two months of a small shop's support: weekday peaks, five channels, a dozen tags."""
    channels = ["email"] * 6 + ["web"] * 3 + ["whatsapp"] * 2 + ["sms", "telegram"]
    tags = ["refund"] * 5 + ["shipping"] * 6 + ["login"] * 3 + ["billing"] * 2 + \
        ["damaged", "invoice", "address", "cancel", "bug", "vip"]
    agents = ["Grace", "Alan", "Ada", None]
    out: list[Seed] = []
    for day in range(60, -1, -1):
        start = (NOW - timedelta(days=day)).replace(hour=0)
        weekday = start.weekday()
        count = rng.randint(4, 9) if weekday < 5 else rng.randint(1, 3)
        for _ in range(count):
            at = start + timedelta(minutes=rng.randint(8 * 60, 22 * 60))
            if at > NOW:
                continue
            age = NOW - at
            answered = rng.random() < 0.93 or age > timedelta(days=10)
            delay = timedelta(minutes=max(2, int(rng.lognormvariate(3.3, 0.8))))
            first = delay if answered and at + delay < NOW else None
            resolved = first is not None and age > timedelta(hours=rng.randint(6, 120))
            rating = rng.choices([5, 4, 3, 2, 1], [50, 25, 10, 8, 7])[0] \
                if resolved and rng.random() < 0.45 else None
            status = "resolved" if resolved else rng.choice(["open", "open", "pending",
                                                              "snoozed"])
            chosen = sorted(set(rng.sample(tags, rng.choice([0, 1, 1, 1, 2]))))
            out.append(Seed(at, rng.choice(channels), chosen, first, rating, status,
                            rng.choice(agents), escalations=int(first is None
                                                                and age > timedelta(hours=2))))
    return out


async def test_a_fuller_store_and_the_screenshot(dashboard_settings: Any, daemon_factory: Any,
                                                 clock: Any, browser: Any) -> None:
    """Two months of conversations: the page shows build_report's summary for them, every
    chart draws, and with FRONTDESK_SCREENSHOTS=1 it is saved as docs/dashboard.png."""
    from playwright.async_api import expect

    d = await daemon_factory(dashboard_settings(sla={"timezone": "Europe/London"}),
                             clock=clock)
    await seed(d.store, _busy_month(random.Random(19)))
    token = await make_token(d.store, "team-lead")
    _, page = await new_page(browser)
    await sign_in(page, base_of(d), token)
    shown = await summary(page)
    report = await report_of(d, 30)
    assert shown == {key: report["overall"][key] for key in shown}
    assert shown["conversations"] > 100
    for chart in CHARTS:
        await expect(page.locator(f'[data-chart="{chart}"] svg.chart')).to_be_visible()
    bars = page.locator('[data-chart="conversations-per-day"] svg.chart rect')
    assert await bars.count() > 30
    if os.environ.get("FRONTDESK_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT), full_page=True)
