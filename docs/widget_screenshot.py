"""Makes ``docs/widget.png``, the README's picture of the chat widget, the way a newcomer sees it:
a daemon on a temporary store, ``/web/demo`` in Chromium (Playwright with Debian's chromium), a
visitor's question on a Saturday, the office-hours notice and a staff reply.

    .venv/bin/python docs/widget_screenshot.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


async def main() -> None:
    from frontdesk.daemon.process.app import Daemon
    from frontdesk.domain.conversations import add_staff_reply, get_conversation
    from tests.support.browser import chromium
    from tests.support.helpers import settings_for

    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(Path(tmp), web={"enabled": True, "title": "Example Shop"},
                                sla={"business_hours": "mon-fri 09:00-17:00",
                                     "timezone": "UTC", "first_response": "1h"})
        daemon = Daemon(settings)
        await daemon.start()
        try:
            async with chromium() as browser:
                page = await browser.new_page(viewport={"width": 900, "height": 720})
                await page.goto(f"http://127.0.0.1:{daemon.http.port}/web/demo")
                await page.locator('[data-frontdesk="launcher"]').click()
                await page.locator('[data-frontdesk="input"]').fill(
                    "Hello! Does the blue kettle come with a UK plug?")
                await page.locator('[data-frontdesk="send"]').click()
                await page.locator('[data-frontdesk="message"][data-state="sent"]').wait_for()
                for _ in range(100):
                    async with daemon.store.reader() as s:
                        try:
                            conversation = await get_conversation(s, 1)
                            break
                        except LookupError:
                            pass
                    await asyncio.sleep(0.1)
                async with daemon.store.session() as s:
                    conversation = await get_conversation(s, 1)
                    await add_staff_reply(s, conversation, "Hi! Yes - the UK version ships "
                                          "with a UK plug. Shall I reserve one for you?",
                                          author="Grace", replies=daemon.replies,
                                          now=datetime.now(UTC))
                daemon.outbox.kick()
                await page.locator('[data-frontdesk="message"][data-author="staff"]').wait_for()
                await page.screenshot(path=str(REPO / "docs" / "widget.png"))
        finally:
            await daemon.stop()
    print(f"wrote {REPO / 'docs' / 'widget.png'}")


if __name__ == "__main__":
    asyncio.run(main())
