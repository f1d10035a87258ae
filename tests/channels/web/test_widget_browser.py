"""The chat widget in a real Chromium, embedded by a test site on another origin, as a visitor
uses it: send, a live staff reply, reload, a second tab and another browser, hostile text, an
origin that is not allowed, kill -9 right after "sent", the offline mail, the keyboard."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from frontdesk.storage.models import Attachment, InboundJournal
from tests.channels.web.conftest import base_of
from tests.channels.web.test_web_chat import PNG, staff_reply
from tests.fakes.smtp_sink import SmtpSink
from tests.support.browser import Site, chromium, skip_reason
from tests.support.helpers import conversations, eventually

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

LAUNCHER = '[data-frontdesk="launcher"]'
PANEL = '[data-frontdesk="panel"]'
INPUT = '[data-frontdesk="input"]'
SEND = '[data-frontdesk="send"]'
EMAIL = '[data-frontdesk="email"]'
FILE = '[data-frontdesk="file"]'
MESSAGE = '[data-frontdesk="message"]'


def mine() -> str:
    return f'{MESSAGE}[data-author="customer"]'


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    s = Site()
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


async def open_widget(page: Any, url: str) -> None:
    from playwright.async_api import expect

    await page.goto(url)
    await page.locator(LAUNCHER).click()
    await expect(page.locator(PANEL)).to_be_visible()


async def write(page: Any, text: str) -> None:
    await page.locator(INPUT).fill(text)
    await page.locator(SEND).click()


async def test_send_live_reply_reload_second_tab_and_another_browser(
        web_settings: Any, daemon_factory: Any, site: Site, browser: Any) -> None:
    from playwright.async_api import expect

    d = await daemon_factory(web_settings(web={"allowed_origins": [site.origin]}))
    site.widget_base = base_of(d)
    context = await browser.new_context()
    page = await context.new_page()
    await open_widget(page, site.origin)
    await expect(page.locator(LAUNCHER)).to_be_visible()  # the host page's CSS stays out
    await write(page, "Do you have the blue kettle?")
    sent = page.locator(mine())
    await expect(sent).to_have_attribute("data-state", "sent")
    await expect(sent).to_contain_text("Do you have the blue kettle?")
    [c] = await eventually(lambda: conversations(d.store))
    assert c.channel == "web"

    started = time.monotonic()
    await staff_reply(d, c.reference, "Yes, two left.")
    staff = page.locator(f'{MESSAGE}[data-author="staff"]')
    await expect(staff).to_contain_text("Yes, two left.", timeout=2000)
    assert time.monotonic() - started < 2.5

    await page.reload()
    await page.locator(LAUNCHER).click()
    await expect(page.locator(MESSAGE)).to_have_count(2)
    second = await context.new_page()  # another tab of the same browser
    await open_widget(second, site.origin)
    await expect(second.locator(MESSAGE)).to_have_count(2)
    await staff_reply(d, c.reference, "Shall I reserve one?")
    for tab in (page, second):
        await expect(tab.locator(f'{MESSAGE}[data-author="staff"]').last).to_contain_text(
            "Shall I reserve one?", timeout=2000)

    stranger = await (await browser.new_context()).new_page()  # another browser
    await open_widget(stranger, site.origin)
    await asyncio.sleep(1.0)
    await expect(stranger.locator(MESSAGE)).to_have_count(0)


async def test_everything_is_shown_as_text(web_settings: Any, daemon_factory: Any, site: Site,
                                           browser: Any) -> None:
    from playwright.async_api import expect

    d = await daemon_factory(web_settings(web={"allowed_origins": [site.origin]}))
    site.widget_base = base_of(d)
    page = await browser.new_page()
    await open_widget(page, site.origin)
    hostile = '<img src=x onerror="window.__pwned=1">'
    await write(page, hostile)
    await expect(page.locator(mine())).to_have_attribute("data-state", "sent")
    [c] = await eventually(lambda: conversations(d.store))
    reply = "<script>window.__pwned=2</script><b>bold</b> *not* <https://evil.example|click>"
    await staff_reply(d, c.reference, reply)
    staff = page.locator(f'{MESSAGE}[data-author="staff"]')
    await expect(staff).to_contain_text(reply, timeout=2000)
    await expect(page.locator(mine())).to_contain_text(hostile)
    assert await page.evaluate("window.__pwned") is None
    injected = await page.evaluate("""() => {
        const root = document.querySelector('[data-frontdesk-host]').shadowRoot;
        return root.querySelectorAll('[data-frontdesk="message"] script, '
            + '[data-frontdesk="message"] b, [data-frontdesk="message"] img').length }""")
    assert injected == 0


async def test_an_origin_not_allowed_gets_nothing_through(
        web_settings: Any, daemon_factory: Any, site: Site, browser: Any) -> None:
    from playwright.async_api import expect

    d = await daemon_factory(web_settings(web={"allowed_origins": ["https://shop.example"]}))
    site.widget_base = base_of(d)
    page = await browser.new_page()
    answered: list[int] = []
    failed: list[str] = []
    page.on("response", lambda r: answered.append(r.status) if "/web/api/" in r.url else None)
    page.on("requestfailed", lambda r: failed.append(r.url) if "/web/api/" in r.url else None)
    await page.goto(site.origin)
    await expect(page.locator(LAUNCHER)).to_be_visible()
    # the preflight gets 403 without CORS headers: the browser fails every call
    await eventually(lambda: _true(bool(failed)))
    await page.locator(LAUNCHER).click()
    await write(page, "Let me in")
    await expect(page.locator(mine())).to_have_attribute("data-state", "failed", timeout=15000)
    assert not [s for s in answered if 200 <= s < 300]
    async with d.store.reader() as s:
        assert (await s.execute(select(InboundJournal))).first() is None


async def _true(value: bool) -> bool:
    return value


async def test_files_and_the_offline_mail(web_settings: Any, daemon_factory: Any, site: Site,
                                          browser: Any, sink: SmtpSink, tmp_path: Path) -> None:
    from playwright.async_api import expect

    d = await daemon_factory(web_settings(web={"allowed_origins": [site.origin],
                                               "offline_email_after": "1s"}))
    site.widget_base = base_of(d)
    page = await browser.new_page()
    await open_widget(page, f"{site.origin}/returns")
    await page.locator(EMAIL).fill("ada@example.org")
    photo = tmp_path / "damage.png"
    photo.write_bytes(PNG)
    await page.locator(FILE).set_input_files(str(photo))
    await write(page, "The parcel arrived damaged")
    await expect(page.locator(mine())).to_have_attribute("data-state", "sent")
    [c] = await eventually(lambda: conversations(d.store))
    async with d.store.reader() as s:
        assert (await s.execute(select(Attachment.filename))).scalars().all() == ["damage.png"]
    await page.keyboard.press("Escape")  # the panel closes: a reply now goes unseen
    await expect(page.locator(PANEL)).to_be_hidden()
    await staff_reply(d, c.reference, "Sorry! A new one is on its way.")

    async def mailed() -> Any:
        for i in range(len(sink.messages)):
            m = sink.parsed(i)
            if "new one is on its way" in m.get_content():
                return m
        return None

    message = await eventually(mailed, timeout=15)
    assert c.reference in message.get_content()
    assert f"{site.origin}/returns" in message.get_content()
    badge = page.locator(LAUNCHER)
    await expect(badge).to_have_attribute("aria-label", re.compile(r"1 new"))
    # opened again, the reply is there and seen
    await badge.click()
    await expect(page.locator(f'{MESSAGE}[data-author="staff"]')).to_contain_text(
        "new one is on its way")


async def test_the_keyboard_reaches_everything_and_escape_closes(
        web_settings: Any, daemon_factory: Any, site: Site, browser: Any) -> None:
    from playwright.async_api import expect

    d = await daemon_factory(web_settings(web={"allowed_origins": [site.origin],
                                               "ask_email": "required"}))
    site.widget_base = base_of(d)
    page = await browser.new_page()
    await page.goto(site.origin)
    launcher = page.locator(LAUNCHER)
    await launcher.focus()
    await expect(launcher).to_have_attribute("aria-expanded", "false")
    await page.keyboard.press("Enter")
    await expect(page.locator(PANEL)).to_be_visible()
    await expect(launcher).to_have_attribute("aria-expanded", "true")
    await expect(page.get_by_role("dialog")).to_be_visible()
    for role, name in (("textbox", "Your message"), ("textbox", "Your email"),
                       ("button", "Send")):
        await expect(page.get_by_role(role, name=name).first).to_be_visible()
    # required email: nothing is sent without it
    await page.locator(INPUT).fill("hello")
    await page.locator(SEND).click()
    await expect(page.get_by_role("alert").first).to_be_visible()
    async with d.store.reader() as s:
        assert (await s.execute(select(InboundJournal))).first() is None
    await page.locator(EMAIL).fill("ada@example.org")
    await page.locator(INPUT).focus()
    await page.keyboard.press("Enter")  # Enter sends
    await expect(page.locator(mine())).to_have_attribute("data-state", "sent")
    await page.keyboard.press("Escape")
    await expect(page.locator(PANEL)).to_be_hidden()
    assert await page.evaluate("""() => document.querySelector('[data-frontdesk-host]')
        .shadowRoot.activeElement?.getAttribute('data-frontdesk')""") == "launcher"


async def test_a_closed_office_says_when_we_reply_and_the_demo_page_works(
        web_settings: Any, daemon_factory: Any, browser: Any, clock: Any) -> None:
    from datetime import UTC, datetime

    from playwright.async_api import expect

    clock.now = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)  # a Saturday
    d = await daemon_factory(web_settings(sla={"business_hours": "mon-fri 09:00-17:00",
                                               "first_response": "1h", "timezone": "UTC"}),
                             clock=clock)
    page = await browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await open_widget(page, f"{base_of(d)}/web/demo")  # the daemon's own origin
    await expect(page.locator(PANEL).get_by_role("status").first).to_contain_text(
        "Monday 10:00")
    await write(page, "Hello from the demo page")
    await expect(page.locator(mine())).to_have_attribute("data-state", "sent")
    assert not [e for e in errors if "Content Security Policy" in e], errors


# -- kill -9 right after "sent" ----------------------------------------------------------------

FRONTDESK = str(Path(sys.executable).parent / "frontdesk")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    import urllib.request

    process = subprocess.Popen([FRONTDESK, "run", "-c", str(config)], stdin=subprocess.DEVNULL,
                               stdout=log.open("ab"), stderr=subprocess.STDOUT,
                               cwd=config.parent)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return process
        except OSError:
            time.sleep(0.1)
    raise AssertionError("daemon not ready:\n" + log.read_text())


async def test_a_message_shown_sent_survives_kill_9(site: Site, browser: Any,
                                                    tmp_path: Path) -> None:
    from playwright.async_api import expect

    port = _free_port()
    config = tmp_path / "frontdesk.toml"
    config.write_text(f"""
[database]
url = "sqlite+aiosqlite:///{tmp_path}/frontdesk.db"
[http]
listen = "127.0.0.1:{port}"
[email.smtp_server]
enabled = false
[daemon]
data_dir = "{tmp_path}/data"
[scheduler]
enabled = false
[web]
enabled = true
allowed_origins = ["{site.origin}"]
""")
    log = tmp_path / "frontdesk.log"
    subprocess.run([FRONTDESK, "db", "upgrade", "-c", str(config)], check=True,
                   capture_output=True, cwd=tmp_path)
    process = await asyncio.to_thread(_start, config, port, log)
    site.widget_base = f"http://127.0.0.1:{port}"
    try:
        page = await browser.new_page()
        await open_widget(page, site.origin)
        await write(page, "Please call me back about order 42")
        await expect(page.locator(mine())).to_have_attribute("data-state", "sent",
                                                             timeout=10000)
        os.kill(process.pid, signal.SIGKILL)  # right after the widget said sent
        process.wait(10)
        process = await asyncio.to_thread(_start, config, port, log)

        def shown() -> str:
            result = subprocess.run([FRONTDESK, "show", "FD-1", "--json", "-c", str(config)],
                                    capture_output=True, text=True, cwd=tmp_path)
            return result.stdout if result.returncode == 0 else ""

        async def stored() -> str:
            return await asyncio.to_thread(shown)

        out = await eventually(stored, timeout=20)
        assert "Please call me back about order 42" in out
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(15)



async def test_on_a_phone_the_panel_takes_the_screen_and_inputs_do_not_zoom(
        web_settings: Any, daemon_factory: Any, site: Site, browser: Any) -> None:
    d = await daemon_factory(web_settings(web={"allowed_origins": [site.origin]}))
    site.widget_base = base_of(d)
    phone = await browser.new_context(viewport={"width": 375, "height": 667},
                                      device_scale_factor=2, is_mobile=True, has_touch=True)
    page = await phone.new_page()
    await open_widget(page, site.origin)
    box = await page.locator(PANEL).bounding_box()
    assert box is not None and box["width"] >= 370 and box["height"] >= 600
    for selector in (INPUT, EMAIL):
        size = await page.locator(selector).evaluate("e => getComputedStyle(e).fontSize")
        assert float(size.removesuffix("px")) >= 16  # iOS zooms into smaller inputs
    await write(page, "Written on a phone")
    from playwright.async_api import expect

    await expect(page.locator(mine())).to_have_attribute("data-state", "sent")
