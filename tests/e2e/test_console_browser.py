"""The web console in a real browser: Debian's Chromium, headless, driven by Playwright,
against the real relay in process.

Mail sent over SMTP appears in its namespace's inbox without a reload, opens, shows its
HTML without running the script in it (nor loading its remote image), its attachment
downloads, and it is released to a real upstream that receives it; a dead letter is
replayed from the page. With ``PODPOST_CONSOLE_SCREENSHOTS=<dir>`` the test also saves
the screenshots the README shows (``docs/console-inbox.png``, ``docs/console-mail.png``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from loadkit import upstream as upstream_mod
from runtime import bus, settings
from tests.support import consoling, dispatching

CHROMIUM = Path("/usr/bin/chromium")


def _require_chromium() -> None:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    _require_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            yield launched
        finally:
            await launched.close()


async def _shot(page: Page, tmp_path: Path, name: str) -> None:
    """Always rendered (so a broken page fails here too); kept when asked for."""
    target = Path(os.environ.get("PODPOST_CONSOLE_SCREENSHOTS") or tmp_path) / name
    await page.screenshot(path=str(target), full_page=False)


async def test_the_console_in_a_browser(
    browser: Browser, nats_settings: settings.NatsSettings, conn: bus.Conn,
    upstream: upstream_mod.Upstream, tmp_path: Path,
) -> None:
    """Live inbox per namespace, safe HTML, attachment download, release to a real
    upstream, and a dead letter replayed, all from the page."""
    async with consoling.running(nats_settings, conn, upstream) as relay:
        page = await browser.new_page(accept_downloads=True,
                                      viewport={"width": 1400, "height": 860})
        fetched: list[str] = []  # connections to the mail's remote image: there must be none

        async def remote(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            fetched.append("connection")
            writer.close()

        pixel = await asyncio.start_server(remote, "127.0.0.1", 0)
        image_url = f"http://127.0.0.1:{pixel.sockets[0].getsockname()[1]}/pixel.gif"
        await page.goto(relay.console_url)
        await page.fill("#token", consoling.TOKEN)
        await page.click("#token-form button")
        await expect(page.locator("#session")).to_have_text("actions allowed")
        await expect(page.locator("#live")).to_have_text("live")

        await relay.send(consoling.html_mail("team b news", to="b@example.org"),
                         source="127.0.0.3")
        await relay.send(consoling.html_mail("Your invoice", to="ann@example.org"))
        await relay.send(consoling.html_mail("Welcome aboard", image_url=image_url))
        rows = page.locator("#mails tbody tr")
        await expect(rows).to_have_count(3)  # arrived without a reload
        await page.click("#inboxes li[data-namespace='team-a']")
        await expect(rows).to_have_count(2)
        await expect(page.locator("#mails tbody")).not_to_contain_text("team b news")
        mine = rows.filter(has_text="Welcome aboard")
        await expect(mine).to_contain_text("team-a/web-1")

        await mine.click()
        frame = page.frame_locator("#mail-html")
        await expect(frame.locator("#greeting")).to_have_text("Hello in HTML")
        await expect(frame.locator("p")).to_have_text("<b>escaped</b>")
        assert await frame.locator("body").get_attribute("data-mark") is None
        assert await page.title() == "podpost console"
        await _shot(page, tmp_path, "console-mail.png")

        async with page.expect_download() as info:
            await page.click("#attachments a")
        download = await info.value
        assert download.suggested_filename == "report.pdf"
        saved = await download.path()
        assert await asyncio.to_thread(Path(saved).read_bytes) == b"%PDF-1.4 test attachment\n"

        await page.select_option("#release-to", consoling.UPSTREAM)
        await page.click("#release")
        await expect(page.locator("#mail-status")).to_have_text(
            f"released to {consoling.UPSTREAM}: queued")
        await dispatching.eventually(lambda: len(upstream.handler.messages) == 1)
        assert b"Subject: Welcome aboard" in upstream.handler.messages[0].data

        await page.click("#inboxes li[data-namespace='']")
        await expect(rows).to_have_count(3)
        await page.click("#mail-html")  # move the pointer off the rows for the picture
        await _shot(page, tmp_path, "console-inbox.png")

        seq = await consoling.dead_letter(conn, "back@example.org")
        await page.click("#tab-dead")
        dead = page.locator(f"#dead tbody tr[data-seq='{seq}']")
        await dead.locator("button.replay").click()
        await expect(page.locator("#dead-status")).to_have_text(
            f"dead letter {seq}: queued for {consoling.UPSTREAM}")
        await expect(dead).to_have_count(0)
        await dispatching.eventually(lambda: len(upstream.handler.messages) == 2)
        assert upstream.handler.messages[1].rcpt_to == ["back@example.org"]
        await page.close()
        pixel.close()
        await pixel.wait_closed()
        assert fetched == []  # the remote image of the mail was never asked for
