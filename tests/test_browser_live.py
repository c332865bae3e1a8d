"""The same conversations, live, in a real headless Chromium: two tabs of one browser (as a
paired phone is: the same owner, another page) and the terminal chat, no reload anywhere.

What one tab sends appears in the other's list; with that conversation open there, the next
question and its reply appear in it as they are saved; a conversation deleted in one tab closes
in the other; a message written by another process (the terminal chat) appears too.
"""

from __future__ import annotations

import pytest

from qwen_chat.store import Store
from tests.server import app_servers  # noqa: F401 - fixture
from tests.test_browser import SHOTS, browser, finished_replies, menu, open_app, rows, send  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_two_tabs_see_each_others_conversations_without_a_reload(browser, app_servers, gguf_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)
    server = app_servers(model=gguf_path, extra_config={"max_new_tokens": 12, "temperature": 0.0})
    context = browser.new_context()
    first = open_app(context, server.url)
    second = open_app(context, server.url)  # the same browser: the same conversations
    expect(rows(second)).to_have_count(0)

    send(first, "Hello from the first tab")
    finished_replies(server.db_path, 1)
    expect(rows(second)).to_have_count(1)
    expect(rows(second).first).to_contain_text("Hello from the first tab")

    rows(second).first.click()  # open it in the second tab, then go on in the first
    users = second.locator('#chatbot [data-testid="user"]')
    expect(users).to_have_count(1)
    send(first, "What is the capital of France?")
    replies = finished_replies(server.db_path, 2)
    assert "Paris" in replies[-1]["content"]
    expect(users).to_have_count(2)
    expect(users.last).to_have_text("What is the capital of France?")
    bots = second.locator('#chatbot [data-testid="bot"]')
    expect(bots).to_have_count(2)
    expect(bots.last).to_contain_text("Paris")  # the reply written in the first tab
    second.screenshot(path=SHOTS / "browser-live-second-tab.png")

    # Another process writes (the terminal chat shares the data folder): it shows up too.
    store = Store(server.db_path)
    try:
        (conversation,) = store.list_conversations(_owner_id(store))
        store.add_message(conversation.id, "user", "Typed in the terminal")
    finally:
        store.close()
    expect(users).to_have_count(3)
    expect(users.last).to_have_text("Typed in the terminal")

    row = rows(first).first
    menu(row, "delete")  # deleted in one tab: closed in the other
    row.locator('[data-act="confirm_delete"]').click()
    expect(rows(second)).to_have_count(0)
    expect(users).to_have_count(0)


def _owner_id(store: Store) -> str:
    """The owner id the page's (encrypted) browser state stands for: the only one stored."""
    (owner,) = {r["owner"] for r in store.db.query("SELECT owner FROM conversations")}
    return owner
