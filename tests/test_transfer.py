"""Export (Markdown, JSON), import and backup, on real SQLite files, the real app and a browser."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from qwen_chat.chat import ChatService
from qwen_chat.config import ConfigWatcher, load_config
from qwen_chat.engine.local import Engine
from qwen_chat.store import Store
from qwen_chat.transfer import ImportRefused
from tests.server import REPO, app_env, app_servers  # noqa: F401 - app_servers is a fixture
from tests.test_browser import SHOTS, browser, finished_replies, open_app, send  # noqa: F401

OWNER = "o" * 32
TEXT = "第一个问题: <b>bold?</b> 👋\n| a | b |"


@pytest.fixture
def service(tmp_path, tiny_model):
    config_path = tmp_path / "config.yaml"
    config_path.write_text("max_new_tokens: 12\ntemperature: 0\n", encoding="utf-8")
    store = Store(tmp_path / "chat.db")
    yield ChatService(store, Engine(*tiny_model), ConfigWatcher(config_path, load_config(config_path)))
    store.close()


def test_export_then_import_gives_the_same_conversation(service):
    final = list(service.send(OWNER, None, TEXT))[-1]
    cid = final.conversation.id
    name, markdown = service.export(OWNER, cid, "md")
    assert name.endswith(".md") and "/" not in name
    assert markdown.startswith(f"# {final.conversation.title}") and TEXT in markdown
    assert "**You**:" in markdown and "**Qwen**:" in markdown and final.text in markdown
    name, text = service.export(OWNER, cid, "json")
    data = json.loads(text)
    assert data["format"] == "qwen-chat" and [m["content"] for m in data["messages"]] == [TEXT, final.text]

    result = service.import_file(OWNER, text.encode())
    imported = result.newest
    assert (result.source, result.added) == ("Qwen Chat", 1)
    assert imported.id != cid and imported.title == final.conversation.title
    pairs = lambda c: [(m.role, m.content, m.status) for m in service.messages(OWNER, c)]  # noqa: E731
    assert pairs(imported.id) == pairs(cid)
    assert imported.id in [c.id for c in service.conversations(OWNER)]
    assert service.import_file(OWNER, text.encode()).skipped == 1  # the same file: not twice
    # Only its owner sees it, and it can be continued like any other conversation.
    assert service.conversations("x" * 32) == []
    assert list(service.send(OWNER, imported.id, "and then?"))[-1].status == "complete"


@pytest.mark.parametrize("raw, reason", [
    (b"not json", "neither a zip nor JSON"),
    (b'{"messages": []}', "not an export of ChatGPT, DeepSeek or Qwen Chat"),
    (b'{"format": "qwen-chat", "messages": []}', "list of 1 to"),
    (b'{"format": "qwen-chat", "messages": [{"role": "wizard", "content": "x"}]}', "message 1"),
    (b'{"format": "qwen-chat", "messages": [{"role": "user", "content": 5}]}', "message 1"),
])
def test_a_file_that_is_not_an_export_is_refused_and_nothing_is_stored(service, raw, reason):
    with pytest.raises(ImportRefused, match=reason):
        service.import_file(OWNER, raw)
    assert service.conversations(OWNER) == []


def test_backup_while_the_database_is_being_written(tmp_path):
    store = Store(tmp_path / "data" / "chat.db")
    conversation = store.create_conversation(OWNER, "busy")
    done = threading.Event()

    def write():
        n = 0
        while not done.is_set():
            store.add_message(conversation.id, "user", f"message {n}")
            n += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        (tmp_path / "config.yaml").write_text("data_dir: data\n", encoding="utf-8")
        result = subprocess.run([sys.executable, "app.py", "--config", str(tmp_path / "config.yaml"),
                                 "--backup"], cwd=REPO, env=app_env(), capture_output=True,
                                text=True, timeout=120)
    finally:
        done.set()
        writer.join()
    assert result.returncode == 0, result.stderr
    [backup] = (tmp_path / "data" / "backups").glob("chat-*.db")
    assert str(backup) in result.stdout
    conn = sqlite3.connect(backup)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        copied = [r[0] for r in conn.execute("SELECT content FROM messages ORDER BY id")]
    finally:
        conn.close()
    # A consistent snapshot: the first messages, in order, with no gap.
    assert copied and copied == [f"message {i}" for i in range(len(copied))]
    store.close()
    # A second backup to the same file is refused in one line; nothing is overwritten.
    again = subprocess.run([sys.executable, "app.py", "--config", str(tmp_path / "config.yaml"),
                            "--backup", str(backup)], cwd=REPO, env=app_env(),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr


def export(page, kind: str, folder: Path) -> Path:
    """Choose "Export .<kind>" in the open conversation's menu, then download the file the
    page offers, as a user would."""
    from playwright.sync_api import expect

    from tests.test_browser import menu

    menu(page.locator("#conversations .row.selected"), f"export_{kind}")
    link = page.locator(f'#exported a[download$=".{kind}"]').first
    expect(link).to_be_visible()
    with page.expect_download() as download:
        link.click()
    saved = folder / download.value.suggested_filename
    download.value.save_as(saved)
    return saved


def test_export_import_and_the_system_panel_in_the_browser(browser, app_servers, tiny_dir, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    server = app_servers(model=tiny_dir, extra_config={"max_new_tokens": 8})
    page = open_app(browser.new_context(accept_downloads=True), server.url)
    send(page, "export me, 导出我")
    [row] = finished_replies(server.db_path, 1)
    reply = row["content"]

    # The System panel (opened by the user) shows what runs and the last reply's speed.
    page.locator("#system-panel button").first.click()
    panel = page.locator("#system")
    expect(panel).to_contain_text(tiny_dir.name)
    expect(panel).to_contain_text("CPU threads")
    expect(panel).to_contain_text(re.compile(r"Memory in use [\d,]+ MB"))
    expect(panel).to_contain_text(f"first token {row['ttft']:.2f} s")
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SHOTS / "browser-system-panel.png")

    saved = export(page, "json", tmp_path)
    data = json.loads(saved.read_text(encoding="utf-8"))
    assert [m["content"] for m in data["messages"]][0] == "export me, 导出我"
    assert data["messages"][1]["content"] == reply

    with page.expect_file_chooser() as chooser:
        page.locator("#import").click()
    chooser.value.set_files(str(saved))
    expect(page.locator("#conversations .row")).to_have_count(2)
    expect(page.locator('#chatbot [data-testid="user"]')).to_have_text("export me, 导出我")
    expect(page.locator("#conversations .row.selected")).to_have_count(1)

    # The open (imported) conversation, as Markdown.
    markdown = export(page, "md", tmp_path).read_text(encoding="utf-8")
    assert "**You**:\n\nexport me, 导出我" in markdown and reply in markdown

    # The System panel, left open, shows the next reply's figures once that reply is in.
    send(page, "and another")
    latest = finished_replies(server.db_path, 3)[-1]
    expect(panel).to_contain_text(f"first token {latest['ttft']:.2f} s")

    # A ChatGPT export (the zip as ChatGPT hands it out), from the sidebar: its branch, titles.
    from tests.test_imports import chatgpt_export, zipped

    chatgpt = tmp_path / "chatgpt-export.zip"
    chatgpt.write_bytes(zipped({"conversations.json": json.dumps(chatgpt_export()), "chat.html": ""}))
    with page.expect_file_chooser() as chooser:
        page.locator("#import").click()
    chooser.value.set_files(str(chatgpt))
    expect(page.get_by_text("Imported 2 conversation(s) from ChatGPT")).to_be_visible()
    expect(page.locator("#conversations .row")).to_have_count(4)
    expect(page.locator("#conversations")).to_contain_text("Capitals")
    page.locator("#conversations .row", has_text="Capitals").first.click()
    expect(page.locator('#chatbot [data-testid="bot"]').last).to_contain_text("Rome.")
    page.screenshot(path=SHOTS / "browser-imported-chatgpt.png")

    # Everything out at once: a zip with each conversation as Markdown and JSON.
    page.locator("#export-all").click()
    link = page.locator('#exported a[download$=".zip"]').first
    expect(link).to_be_visible()
    with page.expect_download() as download:
        link.click()
    every = tmp_path / "all.zip"
    download.value.save_as(every)
    import zipfile

    names = zipfile.ZipFile(every).namelist()
    assert len(names) == 8 and "Capitals.json" in names and "Capitals.md" in names
