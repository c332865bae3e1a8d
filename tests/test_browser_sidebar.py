"""Finding and organising conversations in a real headless Chromium: date groups, search
(Chinese included) that opens a conversation at its match, pin, Ctrl+K; and the page's habits:
Esc stops a reply, the dark mode toggle, read-aloud, the phone-width layout. Screenshots at
1280 and 390 px, light and dark, go to test-output/."""

from __future__ import annotations

import re
import sqlite3
import time

import pytest

from tests.server import app_servers  # noqa: F401 - fixture
from tests.test_browser import SHOTS, browser, menu, open_app, send  # noqa: F401 - a fixture
from tests.test_browser_edit import settled, stored

pytestmark = [pytest.mark.slow, pytest.mark.browser]

DAY = 86_400
OLDER = [("明天北京的天气怎么样？", "北京明天晴，适合出门。", 1),  # (question, answer, days ago)
         ("Plan a picnic for three days from now", "Bring sandwiches and a blanket.", 3),
         ("Explain recursion with a joke", "To understand recursion, see recursion.", 30)]


def add_older_conversations(db_path, owner: str) -> None:
    """Conversations of earlier days, written as the app writes them (the FTS index follows
    through the store's triggers)."""
    now = time.time()
    with sqlite3.connect(db_path) as conn:
        for n, (question, answer, days) in enumerate(OLDER):
            at = now - days * DAY
            cid = f"{n:032x}"
            conn.execute("INSERT INTO conversations (id, owner, title, created_at, updated_at) "
                         "VALUES (?, ?, ?, ?, ?)", [cid, owner, question[:40], at, at])
            for role, text in (("user", question), ("assistant", answer)):
                conn.execute("INSERT INTO messages (conversation_id, role, content, created_at, "
                             "status) VALUES (?, ?, ?, ?, 'complete')", [cid, role, text, at])


def test_find_and_organise(browser, app_servers, tiny_dir):
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)
    server = app_servers(model=tiny_dir, extra_config={"max_new_tokens": 2000})
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script("""
        window.__spoken = [];
        window.speechSynthesis.speak = (u) => window.__spoken.push({text: u.text, lang: u.lang});
    """)
    page = open_app(context, server.url)
    send(page, "Hello today")
    # Esc stops the reply (2,000 tokens would take a while): saved as stopped.
    page.locator("#message .stop-button").wait_for()
    deadline = time.monotonic() + 90  # the reply has started (Esc before that cancels the send)
    while [r["role"] for r in stored(server.db_path)] != ["user", "assistant"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    page.keyboard.press("Escape")
    [question, reply] = settled(server.db_path, 2)
    assert reply["status"] == "stopped"
    # The reply to an edited message (ChatInterface shows no Stop button for it): Esc too.
    page.locator('#chatbot [data-testid="user"]').first.hover()
    page.locator('#chatbot button[aria-label="Edit"]').first.click()
    page.locator("#chatbot textarea.edit-textarea").fill("Hello today, edited")
    page.locator('#chatbot button[aria-label="Submit"]').click()
    expect(page.locator("#message textarea")).to_be_disabled()
    page.keyboard.press("Escape")
    expect(page.locator("#message textarea")).to_be_enabled()
    [question, reply] = settled(server.db_path, 2)
    assert question["content"] == "Hello today, edited" and reply["status"] == "stopped", reply
    assert reply["new_tokens"] < 2000
    with sqlite3.connect(server.db_path) as conn:
        [(owner,)] = conn.execute("SELECT owner FROM conversations").fetchall()
    add_older_conversations(server.db_path, owner)
    page.reload()
    groups = page.locator("#conversations h4")
    expect(groups).to_have_text(["Today", "Yesterday", "Previous 7 days", "Older"])

    # Search: two Chinese characters find the conversation (below the trigram index: a scan).
    page.keyboard.press("Control+K")
    search = page.locator("#search textarea, #search input").first
    expect(search).to_be_focused()
    search.fill("天气")
    expect(groups).to_have_text(["Found in 1 conversations"])
    result = page.locator("#conversations .row")
    expect(result.locator(".snippet")).to_contain_text("天气")
    result.locator(".title").click()
    chatbot = page.locator("#chatbot")
    expect(chatbot.locator('[data-testid="user"]')).to_have_text(OLDER[0][0])
    expect(chatbot.locator(".message-row.found")).to_have_count(1)  # the match, marked
    page.screenshot(path=SHOTS / "browser-search.png")
    search.fill("no such words here")
    expect(page.locator("#conversations .empty")).to_have_text(
        "No conversation holds “no such words here”.")
    search.fill("")
    expect(groups).to_have_count(4)

    # Pin the oldest: it comes first, under "Pinned", and stays pinned after a reload.
    menu(page.locator("#conversations .row").filter(has_text="Explain recursion"), "pin")
    expect(groups.first).to_have_text("Pinned")
    expect(page.locator("#conversations .title").first).to_contain_text("Explain recursion")
    with sqlite3.connect(server.db_path) as conn:
        assert conn.execute("SELECT pinned FROM conversations WHERE id = ?",
                            [f"{2:032x}"]).fetchone() == (1,)
    page.reload()
    expect(groups.first).to_have_text("Pinned")

    # Read aloud: the reply's 🔊 hands its text to the browser's speech synthesis, in Chinese.
    page.locator("#conversations .row").filter(has_text="明天北京").locator(".title").click()
    expect(chatbot.locator('[data-testid="bot"]')).to_have_text(OLDER[0][1])
    page.locator("#chatbot button.read-aloud").first.click()
    assert page.evaluate("window.__spoken") == [{"text": OLDER[0][1], "lang": "zh-CN"}]

    # Light and dark, desktop and phone.
    page.screenshot(path=SHOTS / "page-1280-light.png")
    page.locator("#theme-toggle").click()
    expect(page.locator("body")).to_have_class("dark")
    page.screenshot(path=SHOTS / "page-1280-dark.png")
    page.reload()  # the choice is kept in this browser
    expect(page.locator("body")).to_have_class("dark")

    # The same browser at a phone's width (still dark, as chosen above).
    small = page
    small.set_viewport_size({"width": 390, "height": 844})
    small.reload()
    small.locator("#message textarea").wait_for(timeout=60_000)
    sidebar, opened = small.locator(".sidebar"), re.compile(r"\bopen\b")
    expect(sidebar).not_to_have_class(opened)  # collapsed: the chat has the screen
    small.wait_for_timeout(600)  # the sidebar's slide
    small.screenshot(path=SHOTS / "page-390-dark.png")
    small.locator(".sidebar .toggle-button").click()  # opened, it lists the conversations
    expect(sidebar).to_have_class(opened)
    small.wait_for_timeout(600)
    small.screenshot(path=SHOTS / "page-390-sidebar.png")
    small.locator("#conversations .pick").nth(2).click()  # picking one closes it again
    expect(sidebar).not_to_have_class(opened)
    expect(small.locator('#chatbot [data-testid="user"]')).to_have_text(OLDER[0][0])
    small.wait_for_timeout(600)
    box = small.locator("#message textarea").bounding_box()
    assert box["y"] + box["height"] <= 844 and box["x"] >= 0 and box["x"] + box["width"] <= 390
    status = small.locator("#status").bounding_box()  # the line under the box: not cut off
    assert status["y"] + status["height"] <= 844, status
    assert small.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scroll
    small.locator("#theme-toggle").click()
    expect(small.locator("body")).not_to_have_class("dark")
    small.screenshot(path=SHOTS / "page-390-light.png")
