"""Chat with a document in a real browser, with a real small model (SmolLM2-135M-Instruct):
a 30-page PDF attached with 📎 shows what it costs, a question about one page is answered
with that page cited, a short note goes in whole, a damaged file is refused in one sentence,
and the files stay with their messages after a reload."""

from __future__ import annotations

import re
import sqlite3
import time

import pytest

from tests.server import app_servers  # noqa: F401 - fixture
from tests.test_browser import SHOTS, browser, finished_replies, open_app, send  # noqa: F401
from tests.test_documents import pdf_bytes

pytestmark = pytest.mark.slow


def attach(page, path) -> None:
    with page.expect_file_chooser() as chooser:
        page.locator("#attach").click()
    chooser.value.set_files(str(path))


def test_a_pdf_question_is_answered_with_its_page_cited(browser, app_servers, gguf_path, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    server = app_servers(model=gguf_path, extra_config={"max_new_tokens": 40, "temperature": 0.0})
    page = open_app(browser.new_context(), server.url)

    filler = " ".join(["The harbour report lists the weather, the tides, the roads and the "
                       "repairs of the month, as every page of it does."] * 12)
    pages = [f"Page {i + 1}. {filler}" for i in range(30)]  # about 11,000 tokens in all: long
    pages[16] = f"Page 17. The lighthouse keeper counted 4211 ships in March. {filler}"
    report = tmp_path / "harbour-report.pdf"
    report.write_bytes(pdf_bytes(pages))
    attach(page, report)
    line = page.locator("#attached")
    expect(line).to_contain_text("harbour-report.pdf")
    expect(line).to_contain_text(re.compile(r"harbour-report\.pdf: [\d,]+ tokens, long: each question "
                                            r"reads the [\d,]+ that best match it, about [\d.]+ s"))
    page.screenshot(path=SHOTS / "browser-document-attached.png")
    send(page, "How many ships did the lighthouse keeper count?")
    users = page.locator('#chatbot [data-testid="user"]')
    expect(users.first).to_contain_text("📎 harbour-report.pdf")  # at once, as it is sent
    [reply] = finished_replies(server.db_path, 1)
    assert reply["content"].rsplit("\n\n", 1)[-1].startswith("Sources: harbour-report.pdf p. 17")
    expect(page.locator('#chatbot [data-testid="bot"]').last).to_contain_text("Sources: harbour-report.pdf p. 17")
    expect(line).to_have_text("")  # the file went with the message
    page.locator("#message textarea").click()  # away from the chat's hover controls
    page.screenshot(path=SHOTS / "browser-document-answer.png")

    note = tmp_path / "capital.txt"
    note.write_text("Note: the capital of France is Paris.", encoding="utf-8")
    attach(page, note)
    expect(line).to_contain_text(re.compile(r"capital\.txt: \d+ tokens, about [\d.]+ s to read"))
    send(page, "What is the capital of France?")
    replies = finished_replies(server.db_path, 2)
    assert "Paris" in replies[-1]["content"] and "Sources:" not in replies[-1]["content"]
    retried = replies[-1]["id"]

    expect(users.last).to_contain_text("📎 capital.txt")
    # A retry asks again with the same file: still named above the question, still read.
    page.locator('#chatbot button[aria-label="Retry"]').click()
    expect(users.last).to_have_text(re.compile(r"📎 capital\.txt\s+What is the capital of France\?"))
    deadline = time.monotonic() + 120
    while len(replies := finished_replies(server.db_path, 2)) < 2 or replies[-1]["id"] == retried:
        assert time.monotonic() < deadline, replies
        time.sleep(0.5)
    assert "Paris" in replies[-1]["content"]
    db = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True)
    try:  # the file went with the question asked again
        assert db.execute("SELECT a.name FROM attachments a JOIN messages m ON m.id = a.message_id "
                          "ORDER BY m.id").fetchall() == [("harbour-report.pdf",), ("capital.txt",)]
    finally:
        db.close()
    page.reload()  # the files stay with their messages
    expect(users.first).to_contain_text("📎 harbour-report.pdf")
    expect(users.last).to_contain_text("📎 capital.txt")

    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 not really")
    attach(page, broken)
    expect(page.get_by_text("Could not attach this file: broken.pdf cannot be read as a PDF")).to_be_visible()
    expect(page.locator("#attached")).to_have_text("")
