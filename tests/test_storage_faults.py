"""Storage faults a user's computer really has, made for real against the running app: the
history file held locked by another program, the disk full. Nothing is lost or written twice,
the user reads a sentence (never a traceback), and the app stays up."""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from gradio_client import Client

from tests.server import app_servers  # noqa: F401 - a fixture
from tests.test_browser import browser  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow


def rows(db_path: Path) -> tuple[str, list[dict]]:
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        return check, [dict(r) for r in conn.execute("SELECT * FROM messages ORDER BY id")]


def hold_locked(db_path: Path, seconds: float, locked: threading.Event) -> None:
    """Another program (a SQLite browser mid-edit) holding the file's write lock."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    locked.set()
    time.sleep(seconds)
    conn.execute("ROLLBACK")
    conn.close()


def test_a_history_file_locked_for_15_s_delays_the_message_and_loses_nothing(app_servers, tiny_dir):
    server = app_servers(model=tiny_dir, extra_config={"max_new_tokens": 16})
    owner = secrets.token_hex(16)
    client = Client(server.url, verbose=False)
    first = client.predict(owner, "", "before the lock", api_name="/chat")
    assert first["status"] == "complete"

    locked = threading.Event()
    holder = threading.Thread(target=hold_locked, args=(server.db_path, 15, locked))
    holder.start()
    assert locked.wait(10)
    started = time.monotonic()
    job = client.submit(owner, first["conversation_id"], "sent while locked 🔒", api_name="/chat")
    told = False
    while not told and time.monotonic() - started < 12:  # what /health (and the page) tell
        told = server.health()[1].get("history_busy") is True
        time.sleep(0.2)
    assert told, server.health()
    final = job.result(timeout=120)
    waited = time.monotonic() - started
    holder.join()
    assert final["status"] == "complete" and final["text"], final
    assert waited >= 14, waited  # it did wait for the lock, instead of failing at 2 or 10 s
    check, stored = rows(server.db_path)
    assert check == "ok"
    assert [r["content"] for r in stored if r["role"] == "user"] == ["before the lock",
                                                                     "sent while locked 🔒"]
    assert [r["status"] for r in stored if r["role"] == "assistant"] == ["complete", "complete"]
    assert stored[-1]["content"] == final["text"]
    log = server.log_path.read_text(encoding="utf-8", errors="replace")
    assert "open in another program" in log and "Traceback" not in log, server.log_tail()


@pytest.fixture
def small_disk(tmp_path):
    """The app's data folder on its own 4 MB disk (tmpfs; these test machines run as root)."""
    folder = tmp_path / "app" / "data"
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler.bin"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_says_so_and_the_next_message_after_freeing_space_works(
        small_disk, app_servers, tiny_dir):  # the disk first: unmounted after the app stopped
    from gradio_client.exceptions import AppError

    server = app_servers(model=tiny_dir, extra_config={"max_new_tokens": 16})
    owner = secrets.token_hex(16)
    client = Client(server.url, verbose=False)
    first = client.predict(owner, "", "hello", api_name="/chat")
    assert first["status"] == "complete"

    filler = fill(small_disk)
    saved = ["hello"]
    for k in range(40):  # SQLite first fills the room its files already hold
        text = f"message {k} " + "words " * 300
        try:
            client.predict(owner, first["conversation_id"], text, api_name="/chat")
        except AppError as exc:
            refused = str(exc)
            break
        saved.append(text)
    else:
        pytest.fail("40 messages were saved on a full disk")
    assert "is full" in refused and str(small_disk) in refused and "MB free" in refused, refused
    status, health = server.health()
    assert status == 200 and health["disk_free_mb"] < 1  # still up, and says how much is free

    filler.unlink()
    again = client.predict(owner, first["conversation_id"], "after freeing space",
                           api_name="/chat")
    assert again["status"] == "complete"
    check, stored = rows(server.db_path)
    assert check == "ok"
    users = [r["content"] for r in stored if r["role"] == "user"]
    # The refused message is stored only if the disk filled up between it and its reply.
    assert users in ([*saved, "after freeing space"], [*saved, text, "after freeing space"])
    log = server.log_path.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log and "is full" in log, server.log_tail()  # one line instead


def test_a_prepared_model_that_cannot_be_cached_runs_from_memory_and_leaves_no_file(
        tmp_path, tiny_dir, caplog):
    """A full disk where the int8 model is cached: one warning (how much it needs, how much is
    free), the model works, and no partial file is left to break a later start."""
    import torch

    from qwen_chat.engine.precision import load_quantized

    folder = tmp_path / "cache"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        fill(folder)
        cache_file = folder / "quantized" / "tiny-int8.pt"
        with caplog.at_level("WARNING"):
            model = load_quantized(tiny_dir, cache_file, "int8")
        with torch.no_grad():
            logits = model(torch.tensor([[1, 2, 3]])).logits
        assert logits.shape[:2] == (1, 3) and torch.isfinite(logits).all()
        said = " ".join(r.getMessage() for r in caplog.records)
        assert "Not saving the prepared model" in said and "MB free" in said, said
        assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == ["filler.bin"]
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.browser
def test_the_page_says_it_waits_for_a_locked_history_file_then_answers(browser, app_servers,
                                                                       tiny_dir):
    from playwright.sync_api import expect

    from tests.test_browser import SHOTS, open_app, send

    expect.set_options(timeout=60_000)
    server = app_servers(model=tiny_dir, extra_config={"max_new_tokens": 16})
    page = open_app(browser.new_context(viewport={"width": 1280, "height": 900}), server.url)
    send(page, "hello")
    bot = page.locator('#chatbot [data-testid="bot"]')
    expect(bot).to_have_count(1)
    expect(page.locator("#message textarea")).to_be_enabled()  # the reply has ended

    locked = threading.Event()
    holder = threading.Thread(target=hold_locked, args=(server.db_path, 8, locked))
    holder.start()
    assert locked.wait(10)
    send(page, "sent while the file is locked")
    banner = page.locator("#model-status")
    expect(banner).to_contain_text("open in another program", timeout=15_000)
    page.screenshot(path=str(SHOTS / "browser-history-locked.png"))
    holder.join()
    expect(banner).to_be_hidden(timeout=30_000)
    expect(bot).to_have_count(2)
    expect(page.locator("#message textarea")).to_be_enabled()
    _, stored = rows(server.db_path)
    assert [r["content"] for r in stored if r["role"] == "user"] == [
        "hello", "sent while the file is locked"]
    assert stored[-1]["role"] == "assistant" and stored[-1]["status"] == "complete"


def test_a_read_only_data_folder_is_one_sentence_at_start(tmp_path):
    """A read-only mount (root ignores chmod, so a read-only bind mount it is): the app exits
    at once, naming the folder and the setting to change, without a traceback."""
    from tests.server import free_port, run_app

    data = tmp_path / "app" / "data"
    data.mkdir(parents=True)
    (data / "chat.db").write_bytes(b"")  # a history from before, now on a read-only disk
    if subprocess.run(["mount", "--bind", str(data), str(data)]).returncode:
        pytest.skip("cannot bind-mount here")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(data)]).returncode:
            pytest.skip("cannot remount read-only here")
        done = run_app(tmp_path / "app", {"model": "Qwen/Qwen2.5-0.5B-Instruct", "data_dir": "data",
                                              "port": free_port()})
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert str(data) in out and "data_dir:" in out and "Traceback" not in out, out


@pytest.mark.browser
def test_the_page_says_the_disk_is_full_and_keeps_the_message_on_screen(small_disk, browser,
                                                                        app_servers, tiny_dir):
    from playwright.sync_api import expect

    from tests.test_browser import SHOTS, open_app, send

    expect.set_options(timeout=60_000)
    server = app_servers(model=tiny_dir, extra_config={"max_new_tokens": 16})
    page = open_app(browser.new_context(viewport={"width": 1280, "height": 900}), server.url)
    send(page, "hello")
    box = page.locator("#message textarea")
    expect(page.locator('#chatbot [data-testid="bot"]')).to_have_count(1)
    expect(box).to_be_enabled()
    filler = fill(small_disk)
    chatbot = page.locator("#chatbot")
    bots = chatbot.locator('[data-testid="bot"]')
    for k in range(40):  # SQLite first fills the room its files already hold
        text = f"message {k} " + "words " * 300
        send(page, text)
        expect(bots).to_have_count(k + 2)  # answered, or told why not
        expect(box).to_be_enabled()
        if "is full" in bots.last.inner_text():
            break
    expect(bots.last).to_contain_text("Could not save: the disk holding")
    expect(chatbot.locator('[data-testid="user"]').last).to_contain_text(f"message {k} words")
    page.screenshot(path=str(SHOTS / "browser-disk-full.png"))
    filler.unlink()
    send(page, "after freeing space")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, stored = rows(server.db_path)
        if stored[-1]["role"] == "assistant" and stored[-1]["status"] == "complete" \
                and stored[-2]["content"] == "after freeing space":
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"not answered after freeing space: {stored[-2:]}")
