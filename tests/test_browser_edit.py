"""Going back in a conversation in a real headless Chromium (ChatInterface's own controls):
edit an earlier message and resend, retry the last reply, undo. The database is the truth: an
edit replaces the turns after it, a retry replaces the last reply, the KV cache is reused."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.server import app_servers  # noqa: F401 - fixture
from tests.test_browser import SHOTS, browser, open_app, ready_to_send, send  # noqa: F401 - browser is a fixture

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def stored(db_path) -> list[dict]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM messages ORDER BY id")]
    finally:
        conn.close()


def settled(db_path, count: int, timeout: float = 90) -> list[dict]:
    """The messages once there are `count` of them and no reply is streaming."""
    deadline = time.monotonic() + timeout
    while True:
        rows = stored(db_path)
        if len(rows) == count and all(r["status"] != "streaming" for r in rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)


def test_edit_retry_and_undo(browser, app_servers, tiny_dir):
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    server = app_servers(model=tiny_dir, extra_config={"max_new_tokens": 6, "temperature": 0.0})
    page = open_app(browser.new_context(viewport={"width": 1280, "height": 900}), server.url)
    chatbot = page.locator("#chatbot")
    users, bots = chatbot.locator('[data-testid="user"]'), chatbot.locator('[data-testid="bot"]')
    send(page, "first question")
    settled(server.db_path, 2)
    expect(page.locator("#message textarea")).to_be_enabled()
    send(page, "second <question> & more")
    settled(server.db_path, 4)
    expect(bots).to_have_count(2)
    expect(users.last).to_have_text("second <question> & more")
    before = settled(server.db_path, 4)

    # Edit the second question and submit it as it was (its HTML shown as text): the same
    # question again, a new reply; the prompt is the same, so all of it but the last token
    # comes from the cache.
    edit = chatbot.locator("textarea.edit-textarea")
    users.last.hover()
    users.last.locator("xpath=ancestor::div[contains(@class,'message-row')]/following-sibling::"
                       "div[contains(@class,'message-buttons')][1]").get_by_label("Edit").click()
    expect(edit).to_have_count(1)
    page.locator('#chatbot button[aria-label="Submit"]').click()
    rows = wait_for_new_reply(server.db_path, 4, before[-1]["id"])
    assert [r["content"] for r in rows[:3]] == [r["content"] for r in before[:3]]
    assert rows[2]["content"] == "second <question> & more"
    assert rows[3]["cached_tokens"] >= rows[3]["prompt_tokens"] - 1, rows[3]
    expect(users.last).to_have_text("second <question> & more")

    # Edit the first question: the turns after it are replaced by the new answer.
    users.first.hover()
    page.locator('#chatbot button[aria-label="Edit"]').first.click()
    expect(edit).to_have_value("first question")
    edit.fill("first question, edited")
    page.locator('#chatbot button[aria-label="Submit"]').click()
    rows = wait_for_new_reply(server.db_path, 2, rows[-1]["id"])
    assert [r["content"] for r in rows[:1]] == ["first question, edited"]
    assert 0 < rows[1]["cached_tokens"] < rows[1]["prompt_tokens"]  # the system prompt
    expect(users).to_have_count(1)
    expect(bots).to_have_count(1)
    expect(users.first).to_have_text("first question, edited")
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SHOTS / "browser-edit.png")

    # Retry the last reply: the question stays, a new reply replaces the old one.
    page.locator('#chatbot button[aria-label="Retry"]').click()
    rows = wait_for_new_reply(server.db_path, 2, rows[-1]["id"])
    assert rows[0]["content"] == "first question, edited"
    assert rows[1]["cached_tokens"] >= rows[1]["prompt_tokens"] - 1, rows[1]

    # Undo takes the question back into the box; nothing is deleted until it is sent again.
    page.locator('#chatbot button[aria-label="Undo"]').click()
    expect(users).to_have_count(0)
    box = page.locator("#message textarea")
    expect(box).to_have_value("first question, edited")
    assert len(stored(server.db_path)) == 2
    box.fill("a new first question")
    ready_to_send(page)
    box.press("Enter")
    rows = wait_for_new_reply(server.db_path, 2, rows[-1]["id"])
    assert rows[0]["content"] == "a new first question"

    page.reload()
    expect(page.locator('#chatbot [data-testid="user"]')).to_have_text(["a new first question"])
    # Retry and edit work as well on a conversation just opened (not only on one just sent).
    page.locator('#chatbot button[aria-label="Retry"]').click()
    rows = wait_for_new_reply(server.db_path, 2, rows[-1]["id"])
    assert rows[0]["content"] == "a new first question"
    page.reload()
    users.first.hover()
    page.locator('#chatbot button[aria-label="Edit"]').first.click()
    edit.fill("edited after a reload")
    page.locator('#chatbot button[aria-label="Submit"]').click()
    rows = wait_for_new_reply(server.db_path, 2, rows[-1]["id"])
    assert rows[0]["content"] == "edited after a reload"


def wait_for_new_reply(db_path, count: int, old_reply_id: int) -> list[dict]:
    """The messages once the last is a finished reply other than `old_reply_id`."""
    deadline = time.monotonic() + 90
    while True:
        rows = stored(db_path)
        if (len(rows) == count and rows[-1]["role"] == "assistant"
                and rows[-1]["id"] != old_reply_id and rows[-1]["status"] == "complete"):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
