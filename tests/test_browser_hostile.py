"""Hostile text in a real browser: HTML and <script> in a message or a reply show as text and
never run. The message is typed into the page; the reply is one the model could write, stored
in the app's database and shown after a reload (the same rendering path as a streamed reply)."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.server import app_servers  # noqa: F401 - a fixture
from tests.test_browser import browser, open_app, send  # noqa: F401 - browser is a fixture

pytestmark = [pytest.mark.slow, pytest.mark.browser]

HOSTILE = ('<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
           '<b>bold?</b> & <a href="javascript:window.__pwned=3">link</a>')
REPLY = ('Here: <script>window.__pwned = 4</script><svg onload="window.__pwned = 5"></svg>'
         '\n\n```html\n<p>code stays</p>\n```')


def test_html_in_messages_and_replies_is_shown_as_text(browser, app_servers, tiny_dir):
    server = app_servers(model=tiny_dir, extra_config={"max_new_tokens": 8})
    page = open_app(browser.new_context(), server.url)
    send(page, HOSTILE)
    bubbles = page.locator("#chatbot .message")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the reply is saved
        with sqlite3.connect(server.db_path) as conn:
            rows = conn.execute("SELECT role, status, conversation_id FROM messages").fetchall()
        if len(rows) == 2 and rows[1][1] == "complete":
            break
        time.sleep(0.2)
    assert page.get_by_text("<script>window.__pwned = 1</script>", exact=False).count() >= 1
    assert page.locator("#chatbot img[src='x'], #chatbot b, #chatbot a[href^='javascript']").count() == 0
    # A reply holding HTML (as a model could write): stored, then shown after a reload.
    with sqlite3.connect(server.db_path) as conn:
        conn.execute("UPDATE messages SET content = ? WHERE role = 'assistant'", [REPLY])
    page.reload()
    page.locator("#conversations label").first.click()
    page.get_by_text("Here: <script>window.__pwned = 4</script>", exact=False).wait_for(timeout=30_000)
    assert page.locator("#chatbot svg[onload]").count() == 0
    assert page.locator("#chatbot pre code").filter(has_text="<p>code stays</p>").count() == 1
    assert page.evaluate("() => window.__pwned") is None
    assert bubbles.count() >= 2
