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
    page.locator("#conversations .title").first.click()
    page.get_by_text("Here: <script>window.__pwned = 4</script>", exact=False).wait_for(timeout=30_000)
    assert page.locator("#chatbot svg[onload]").count() == 0
    assert page.locator("#chatbot pre code").filter(has_text="<p>code stays</p>").count() == 1
    assert page.evaluate("() => window.__pwned") is None
    assert bubbles.count() >= 2


class _ImageHost:
    """Another web server (on 127.0.0.2, loopback): records every request, answers a PNG."""

    PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                        "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")

    def __init__(self):
        import http.server
        import threading

        host = self
        self.requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                host.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(host.PNG)))
                self.end_headers()
                self.wfile.write(host.PNG)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.origin = f"http://127.0.0.2:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_images_from_other_hosts_are_links_that_load_only_when_clicked(browser, app_servers,
                                                                        tiny_dir):
    """A message and a reply each holding a markdown image from another host: the page makes
    zero requests to it (its network log and the host's own log), shows a link naming the host
    instead; with `allow_remote_images: true` saved in config.yaml the same page loads them."""
    from tests.server import write_config
    from tests.test_browser import SHOTS

    images = _ImageHost()
    try:
        server = app_servers(model=tiny_dir, extra_config={"max_new_tokens": 4})
        page = open_app(browser.new_context(), server.url)
        seen: list[str] = []
        page.on("request", lambda request: seen.append(request.url))
        send(page, f"Look: ![the chat so far]({images.origin}/leak.png?q=secret) and this")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the reply is saved
            with sqlite3.connect(server.db_path) as conn:
                rows = conn.execute("SELECT status FROM messages").fetchall()
            if len(rows) == 2 and rows[1][0] == "complete":
                break
            time.sleep(0.2)
        with sqlite3.connect(server.db_path) as conn:  # a reply a model could write
            conn.execute("UPDATE messages SET content = ? WHERE role = 'assistant'",
                         [f"Sure ![pixel]({images.origin}/reply.png) done"])
        page.reload()
        page.locator("#conversations .title").first.click()
        link = page.locator("#chatbot a", has_text="↗ pixel · 127.0.0.2")
        link.wait_for(timeout=30_000)
        assert page.locator("#chatbot a", has_text="↗ the chat so far · 127.0.0.2").count() == 1
        assert link.get_attribute("href") == f"{images.origin}/reply.png"
        assert page.locator(f"#chatbot img[src^='{images.origin}']").count() == 0
        page.wait_for_timeout(1000)  # time for any late image request to be made
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=SHOTS / "browser-remote-image-link.png")
        assert [u for u in seen if u.startswith(images.origin)] == [] and images.requests == []

        # The user opts in: the next render shows the images (so this test sees a fetch).
        write_config(server.config_dir, {**server.config, "allow_remote_images": True})
        page.reload()
        page.locator("#conversations .title").first.click()
        page.locator(f"#chatbot img[src='{images.origin}/reply.png']").wait_for(timeout=30_000)
        deadline = time.monotonic() + 10
        while "/reply.png" not in images.requests and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "/reply.png" in images.requests, images.requests
        assert any(u.startswith(images.origin) for u in seen)
    finally:
        images.close()
