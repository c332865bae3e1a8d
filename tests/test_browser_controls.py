"""The page's controls in a real headless Chromium: welcome text, Stop, rendering, rename, delete,
a reload mid-reply, and the Chinese interface.

Stop must end the generation itself: the reply is saved as "stopped" with far fewer tokens than
allowed, the page shows it marked, and the next question is answered at once.
"""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.server import app_servers  # noqa: F401 - fixture
from tests.test_browser import SHOTS, browser, menu, open_app, ready_to_send, send  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.browser]

MAX_TOKENS = 1500  # a story this long would take minutes: Stop must cut it short


def replies(db_path) -> list[dict]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(
            "SELECT * FROM messages WHERE role = 'assistant' ORDER BY id")]
    finally:
        conn.close()


def conversation_titles(db_path) -> list[str]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10) as conn:
        return [r[0] for r in conn.execute("SELECT title FROM conversations ORDER BY rowid")]


def wait_for(predicate, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)
    return result


def test_stop_rendering_rename_and_delete(browser, app_servers, gguf_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    server = app_servers(model=gguf_path, extra_config={"max_new_tokens": MAX_TOKENS,
                                                        "temperature": 0.7})
    page = open_app(browser.new_context(viewport={"width": 1280, "height": 900}), server.url)
    chatbot = page.locator("#chatbot")
    bot = chatbot.locator('[data-testid="bot"]')

    # A new user is greeted and told how to send.
    expect(chatbot).to_contain_text("Press Enter to send")

    # Stop mid-reply: the generation ends, the partial reply is kept and marked.
    send(page, "Write a very long story about a brave dragon and a clever knight.")
    wait_for(lambda: len(bot.last.inner_text()) > 40 if bot.count() else False)
    # The box stays open while the reply is written: the next message is typed meanwhile,
    # Enter does not send it yet (one reply at a time), and Stop leaves it in the box.
    box, users = page.locator("#message textarea"), chatbot.locator('[data-testid="user"]')
    expect(box).to_be_enabled()
    box.fill("Say **hello** to $$E = mc^2$$ please")
    box.press("Enter")
    time.sleep(1.0)
    expect(users).to_have_count(1)
    page.locator("#message .stop-button").click()
    expect(page.locator("#message .submit-button")).to_be_visible()
    stopped = wait_for(lambda: [r for r in replies(server.db_path) if r["status"] != "streaming"])
    assert stopped[0]["status"] == "stopped", stopped
    assert 0 < stopped[0]["new_tokens"] < MAX_TOKENS / 2
    expect(bot.last).to_contain_text("stopped")
    tokens_at_stop = stopped[0]["new_tokens"]
    time.sleep(1.0)
    assert replies(server.db_path)[0]["new_tokens"] == tokens_at_stop  # nothing ran on
    expect(box).to_have_value("Say **hello** to $$E = mc^2$$ please")

    # Enter now sends what was typed, and it is answered: the engine is free again. Markdown
    # and LaTeX render.
    box.press("Enter")
    user = users.last
    expect(user.locator("strong")).to_have_text("hello")
    expect(user.locator(".katex").first).to_be_visible()
    wait_for(lambda: bot.count() == 2 and len(bot.last.inner_text()) > 0)  # it is answered
    page.locator("#message .stop-button").click()  # no need to read the whole reply
    wait_for(lambda: all(r["status"] != "streaming" for r in replies(server.db_path))
             and len(replies(server.db_path)) == 2)
    assert replies(server.db_path)[1]["new_tokens"] > 0

    # Rename inline, then delete (after a confirmation) the conversation, from its row's menu.
    listing = page.locator("#conversations .title")
    expect(listing).to_have_count(1)
    row = page.locator("#conversations .row").first
    menu(row, "rename")
    title = row.locator("input.rename")
    title.fill("Dragon story")
    title.press("Enter")
    expect(listing).to_have_text(["Dragon story"])
    wait_for(lambda: conversation_titles(server.db_path) == ["Dragon story"], timeout=10)
    page.screenshot(path=SHOTS / "browser-controls.png")
    menu(row, "delete")
    expect(row.locator(".confirm")).to_be_visible()  # nothing deleted yet
    assert conversation_titles(server.db_path) == ["Dragon story"]
    row.locator('[data-act="confirm_delete"]').click()
    expect(listing).to_have_count(0)
    expect(chatbot.locator('[data-testid="user"]')).to_have_count(0)
    wait_for(lambda: replies(server.db_path) == [], timeout=10)  # gone from disk too
    page.reload()
    page.locator("#message textarea").wait_for(timeout=60_000)
    expect(page.locator("#conversations .row")).to_have_count(0)

    # Reloading the page mid-reply ends the generation too (bounded), keeping the partial reply.
    send(page, "Write a very long story about a brave dragon and a clever knight.")
    wait_for(lambda: len(bot.last.inner_text()) > 40 if bot.count() else False)
    page.reload()
    [cut] = wait_for(lambda: [r for r in replies(server.db_path) if r["status"] != "streaming"],
                     timeout=15)
    assert cut["status"] == "stopped" and 0 < cut["new_tokens"] < MAX_TOKENS / 2, cut
    time.sleep(1.0)
    assert replies(server.db_path)[0]["new_tokens"] == cut["new_tokens"]
    expect(page.locator('#chatbot [data-testid="bot"]').last).to_contain_text("stopped")

    # A Chinese browser gets the Chinese interface.
    zh = open_app(browser.new_context(locale="zh-CN"), server.url)
    expect(zh.locator("#new-chat")).to_have_text("+ 新对话")
    expect(zh.locator("#message .submit-button")).to_have_text("发送")


def test_the_next_message_is_typed_while_a_reply_is_written(browser, app_servers, gguf_path):
    """The box stays open while a reply is written (ChatInterface locks it, and empties it as
    the reply ends): what is typed meanwhile is still there when the reply ends by itself, on a
    retry too, is prefilled once the reply has ended, and Enter then sends it."""
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    server = app_servers(model=gguf_path, extra_config={"max_new_tokens": 300, "temperature": 0.7})
    page = open_app(browser.new_context(viewport={"width": 1280, "height": 900}), server.url)
    box, stop = page.locator("#message textarea"), page.locator("#message .stop-button")
    users = page.locator('#chatbot [data-testid="user"]')

    send(page, "Write a very long story about a brave dragon and a clever knight.")
    stop.wait_for()
    box.fill("What is the capital of France?")
    expect(stop).to_be_visible()  # typed while the reply is written
    box.press("Enter")  # not sent: the reply has not ended
    ready_to_send(page)  # it ends by itself
    [first] = wait_for(lambda: [r for r in replies(server.db_path) if r["status"] == "complete"])
    expect(box).to_have_value("What is the capital of France?")
    expect(users).to_have_count(1)

    page.locator('#chatbot button[aria-label="Retry"]').click()
    stop.wait_for()
    box.press_sequentially(" One word.")
    expect(stop).to_be_visible()  # typed while the retry's reply is written
    ready_to_send(page)
    wait_for(lambda: [r for r in replies(server.db_path)
                      if r["status"] == "complete" and r["id"] != first["id"]])
    expect(box).to_have_value("What is the capital of France? One word.")
    # What was typed during the reply reaches the engine again once the reply has ended
    # (observed: Gradio runs the box's latest input event once more then; the drafts sent
    # during the reply were dropped, they lacked it), so Send has one token left to prefill.
    time.sleep(2)  # the user looks at the answer; the ~10-token draft is prefilled
    box.press("Enter")
    expect(users).to_have_count(2)
    expect(users.last).to_have_text("What is the capital of France? One word.")
    wait_for(lambda: len(replies(server.db_path)) == 2
             and replies(server.db_path)[-1]["status"] == "complete")
    second = replies(server.db_path)[-1]
    assert second["cached_tokens"] == second["prompt_tokens"] - 1, second


def test_a_message_stopped_while_it_waits_for_its_turn_is_kept(browser, app_servers, gguf_path,
                                                                tmp_path):
    """With one reply at a time (max_batch: 1), a message sent while another browser's reply
    runs waits for its turn; Stop then must not lose it: it is stored as sent, with its
    attached file and an empty reply marked stopped, and is there after a reload."""
    from playwright.sync_api import expect

    from tests.test_browser_documents import attach

    expect.set_options(timeout=60_000)
    server = app_servers(model=gguf_path, extra_config={"max_new_tokens": MAX_TOKENS,
                                                        "temperature": 0.7, "max_batch": 1})
    busy = open_app(browser.new_context(), server.url)
    send(busy, "Write a very long story about a brave dragon and a clever knight.")
    wait_for(lambda: [r for r in replies(server.db_path) if r["status"] == "streaming"])

    page = open_app(browser.new_context(), server.url)
    note = tmp_path / "waiting-note.txt"
    note.write_text("The meeting is on Tuesday.", encoding="utf-8")
    attach(page, note)
    expect(page.locator("#attached")).to_contain_text("waiting-note.txt")
    send(page, "Keep me, please 请保留")
    users = page.locator('#chatbot [data-testid="user"]')
    expect(users).to_have_count(1)
    time.sleep(1.0)  # its turn has not come: the other reply holds the one place
    assert len(replies(server.db_path)) == 1
    page.locator("#message .stop-button").click()

    def kept():
        with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True, timeout=10) as conn:
            return conn.execute(
                "SELECT u.content, r.status, a.name FROM messages u "
                "JOIN messages r ON r.conversation_id = u.conversation_id AND r.id > u.id "
                "LEFT JOIN attachments a ON a.message_id = u.id "
                "WHERE u.content = 'Keep me, please 请保留'").fetchall()
    assert wait_for(kept, timeout=30) == [("Keep me, please 请保留", "stopped", "waiting-note.txt")]
    expect(page.locator("#attached")).to_have_text("")  # the file went with the message
    expect(page.locator("#conversations .row")).to_have_count(1)
    page.reload()
    page.locator("#message textarea").wait_for(timeout=60_000)
    expect(users).to_have_count(1)
    expect(users.first).to_contain_text("Keep me, please 请保留")
    expect(users.first).to_contain_text("📎 waiting-note.txt")
    busy.locator("#message .stop-button").click()
