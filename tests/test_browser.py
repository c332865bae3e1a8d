"""One user's journey in a real headless Chromium against a real `python app.py` (SmolLM2-135M).

The user types "What is the capital of France?" and presses Enter: their bubble appears, the
reply streams in and says Paris, the status line shows "First token … s · … tokens/s · N tokens".
After a reload the conversation is still listed and shown. "+ New chat" and a second question,
typed key by key (prefilled while typed: Send has one token left to prefill), give two
conversations; clicking the first shows its Paris answer again. Another browser (a new context,
i.e. another localStorage) sees none of it. Screenshots go to test-output/.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from pathlib import Path

import pytest

from tests.server import REPO, app_servers  # noqa: F401 - app_servers is a fixture

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO / "test-output"
QUESTION = "What is the capital of France?"
SECOND = "What is 2 + 2?"
REPLY_TIMEOUT = 180  # seconds for one whole reply on a slow shared CPU
STATUS = re.compile(r"^First token \d+\.\d\d s · \d+\.\d tokens/s · \d+ tokens$")


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} not found: install Debian's chromium to run browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright for Python is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield browser
        finally:
            browser.close()


def finished_replies(db_path: Path, count: int) -> list[dict]:
    """Wait until `count` replies are complete in the app's database; return them, oldest first."""
    deadline = time.monotonic() + REPLY_TIMEOUT
    while True:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in conn.execute(
                "SELECT * FROM messages WHERE role = 'assistant' ORDER BY id")]
        finally:
            conn.close()
        if len(rows) >= count and all(r["status"] != "streaming" for r in rows):
            assert [r["status"] for r in rows] == ["complete"] * count, rows
            return rows
        assert time.monotonic() < deadline, f"replies not finished: {rows}"
        time.sleep(0.5)


def open_app(context, url: str):
    """Open the page and wait until it has loaded this browser's identity and conversations."""
    page = context.new_page()
    trouble: list[str] = []  # what the page met, for the message if it does not load
    page.on("console", lambda m: m.type == "error" and trouble.append(f"console: {m.text}"))
    page.on("requestfailed", lambda r: trouble.append(f"failed: {r.url} {r.failure}"))
    page.on("crash", lambda _: trouble.append("the page crashed"))
    page.goto(url, timeout=60_000)
    try:
        page.locator("#message textarea").wait_for(timeout=60_000)
    except Exception as exc:  # say what the page showed instead: a screenshot and its text
        SHOTS.mkdir(exist_ok=True)
        shot = SHOTS / f"open-app-failed-{time.strftime('%H%M%S')}.png"
        page.screenshot(path=shot)
        text = page.evaluate("() => document.body ? document.body.innerText : ''")[:1500]
        raise AssertionError(f"the page at {url} showed no message box within 60 s; "
                             f"screenshot {shot}; its text: {text!r}; {trouble[-10:]}") from exc
    # The owner id lands in localStorage with the result of the page's load event.
    page.wait_for_function("() => !!localStorage.getItem('qwen_chat_owner')", timeout=60_000)
    return page


def rows(page):
    """The sidebar's conversation rows; `.title` of each is what it shows."""
    return page.locator("#conversations .row")


def menu(row, action: str) -> None:
    """Open a conversation row's menu (its ⋯ button) and click one of its actions."""
    row.hover()
    row.locator(".menu-toggle").click()
    row.locator(f'[data-act="{action}"]').click()


def ready_to_send(page) -> None:
    """Wait until the tab's last reply has ended: Send shows again (the box stays open while a
    reply is written, but Enter sends only then)."""
    page.locator("#message .submit-button").wait_for(timeout=60_000)


def send(page, text: str) -> None:
    ready_to_send(page)
    box = page.locator("#message textarea")
    box.fill(text)
    box.press("Enter")


def test_chat_journey_in_a_real_browser(browser, app_servers, gguf_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)  # every check below may wait on a slow, shared machine
    server = app_servers(model=gguf_path)
    SHOTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = open_app(context, server.url)
    chatbot, status = page.locator("#chatbot"), page.locator("#status")
    listing = page.locator("#conversations .title")
    try:
        expect(listing).to_have_count(0)

        # Ask: the question shows at once as the user's bubble, the reply streams below it.
        send(page, QUESTION)
        expect(page.locator("#message textarea")).to_have_value("", timeout=10_000)
        expect(chatbot.locator('[data-testid="user"]')).to_have_text(QUESTION, timeout=30_000)
        expect(status).to_contain_text("First token", timeout=REPLY_TIMEOUT * 1000)
        bot = chatbot.locator('[data-testid="bot"]')
        expect(bot).to_contain_text("Paris", timeout=REPLY_TIMEOUT * 1000)
        [first] = finished_replies(server.db_path, 1)
        # The finished reply: exactly what was saved, and the final figures in the status line.
        expect(bot).to_have_text(first["content"].strip(), timeout=30_000)
        expect(status).to_have_text(re.compile(rf"· {first['new_tokens']} tokens\s*$"),
                                    timeout=30_000)
        assert STATUS.match(status.inner_text().strip()), status.inner_text()
        # The box is ready for the next message, its hint back (ChatInterface had emptied it).
        expect(page.locator("#message textarea")).to_have_attribute(
            "placeholder", "Type a message, Enter to send")
        expect(listing).to_have_text([QUESTION])
        page.screenshot(path=SHOTS / "browser-first-reply.png")

        # Reload: the conversation is listed (and selected) and its messages are shown again.
        page.reload()
        page.locator("#message textarea").wait_for(timeout=60_000)
        expect(listing).to_have_text([QUESTION], timeout=60_000)
        expect(page.locator("#conversations .row.selected")).to_have_count(1)
        expect(chatbot.locator('[data-testid="user"]')).to_have_text(QUESTION, timeout=30_000)
        expect(chatbot.locator('[data-testid="bot"]')).to_contain_text("Paris")
        page.screenshot(path=SHOTS / "browser-reload.png")

        # "+ New chat" empties the view; a second question makes a second conversation.
        page.locator("#new-chat").click()
        expect(chatbot.locator('[data-testid="user"]')).to_have_count(0, timeout=30_000)
        # Typed key by key: the page hands each draft to the engine, which prefills it while the
        # user types, so Send has only the assistant's header left (cached_tokens, stored).
        box = page.locator("#message textarea")
        box.press_sequentially(SECOND, delay=60)
        time.sleep(2)  # the user reads what they typed; the last draft (~15 tokens) is prefilled
        ready_to_send(page)
        box.press("Enter")
        expect(chatbot.locator('[data-testid="user"]')).to_have_text(SECOND, timeout=30_000)
        second = finished_replies(server.db_path, 2)[1]
        assert second["cached_tokens"] == second["prompt_tokens"] - 1, second
        expect(listing).to_have_count(2, timeout=30_000)
        expect(listing.first).to_have_text(SECOND)  # newest first
        expect(chatbot).not_to_contain_text("Paris")

        # Back to the first conversation: its question and the Paris answer are shown.
        listing.filter(has_text=QUESTION).click()
        expect(chatbot.locator('[data-testid="user"]')).to_have_text(QUESTION, timeout=30_000)
        expect(chatbot.locator('[data-testid="bot"]')).to_contain_text("Paris")
        expect(chatbot).not_to_contain_text(SECOND)
        page.screenshot(path=SHOTS / "browser-chat.png")
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=SHOTS / "browser-failure.png")
        raise

    # Another browser (its own localStorage) gets its own empty history.
    other = open_app(browser.new_context(), server.url)
    expect(other.locator("#conversations .row")).to_have_count(0)
    expect(other.locator('#chatbot [data-testid="user"]')).to_have_count(0)
    other.screenshot(path=SHOTS / "browser-other-browser.png")
    # ... while the first browser still has both.
    page.reload()
    expect(page.locator("#conversations .row")).to_have_count(2, timeout=60_000)
