"""The SQLite store on a real temporary file: conversations, messages, migrations, recovery."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlite_utils

from qwen_chat.errors import NotFound
from qwen_chat.migrations import migrations
from qwen_chat.store import Store, connect

ALICE, BOB = "a" * 32, "b" * 32


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "chat.db")
    yield s
    s.close()


def test_create_list_rename_delete(store):
    first = store.create_conversation(ALICE, "First")
    time.sleep(0.01)
    second = store.create_conversation(ALICE, "Second")
    assert [c.title for c in store.list_conversations(ALICE)] == ["Second", "First"]
    assert len(first.id) == 32 and first.id != second.id

    store.rename_conversation(ALICE, first.id, "Renamed")
    assert store.get_conversation(ALICE, first.id).title == "Renamed"

    store.add_message(first.id, "user", "hello")
    store.delete_conversation(ALICE, first.id)
    assert [c.title for c in store.list_conversations(ALICE)] == ["Second"]
    rows = sqlite3.connect(store.path).execute(
        "SELECT count(*) FROM messages WHERE conversation_id = ?", [first.id]).fetchone()
    assert rows == (0,)


def test_a_new_message_moves_its_conversation_to_the_top(store):
    old = store.create_conversation(ALICE, "Old")
    time.sleep(0.01)
    store.create_conversation(ALICE, "New")
    time.sleep(0.01)
    store.add_message(old.id, "user", "bump")
    assert [c.title for c in store.list_conversations(ALICE)] == ["Old", "New"]


def test_messages_keep_order_text_and_figures(store):
    conv = store.create_conversation(ALICE, "t")
    text = "中文 emoji 🎉 RTL שלום zero\u200bwidth NUL\x00end <script>x</script>"
    store.add_message(conv.id, "user", text)
    reply = store.add_message(conv.id, "assistant", "", status="streaming")
    store.update_message(reply.id, content="Hi", status="complete", prompt_tokens=12,
                         new_tokens=3, ttft=0.25, tokens_per_s=20.5)
    user, assistant = store.messages(ALICE, conv.id)
    assert user.content == text and user.role == "user"
    assert (assistant.content, assistant.status, assistant.new_tokens) == ("Hi", "complete", 3)
    assert (assistant.prompt_tokens, assistant.ttft, assistant.tokens_per_s) == (12, 0.25, 20.5)
    assert assistant.updated_at >= assistant.created_at > 0


def test_another_browser_cannot_see_or_change_a_conversation(store):
    conv = store.create_conversation(ALICE, "private")
    assert store.list_conversations(BOB) == []
    for attempt in (lambda: store.messages(BOB, conv.id),
                    lambda: store.rename_conversation(BOB, conv.id, "x"),
                    lambda: store.delete_conversation(BOB, conv.id)):
        with pytest.raises(NotFound):
            attempt()
    assert store.get_conversation(ALICE, conv.id).title == "private"


def test_a_reply_cut_by_a_crash_is_marked_interrupted_on_open(tmp_path):
    path = tmp_path / "chat.db"
    store = Store(path)
    conv = store.create_conversation(ALICE, "t")
    reply = store.add_message(conv.id, "assistant", "partial", status="streaming")
    store.db.conn.close()  # no clean shutdown
    reopened = Store(path)
    [message] = reopened.messages(ALICE, conv.id)
    assert (message.id, message.content, message.status) == (reply.id, "partial", "interrupted")
    reopened.close()


def test_a_reply_another_running_process_writes_stays_streaming(tmp_path):
    """The terminal chat opening the file beside the page leaves the page's reply alone; once
    its writer is gone (killed), the next open marks it interrupted."""
    path = tmp_path / "chat.db"
    code = ("import sys, time; from qwen_chat.store import Store; s = Store(sys.argv[1]); "
            "c = s.create_conversation('a' * 32, 't'); "
            "s.add_message(c.id, 'assistant', 'partial', status='streaming'); "
            "print(c.id, flush=True); time.sleep(120)")
    writer = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        conversation_id = writer.stdout.readline().strip()
        beside = Store(path)
        assert [m.status for m in beside.messages("a" * 32, conversation_id)] == ["streaming"]
        beside.close()
    finally:
        writer.kill()
        writer.wait()
    after = Store(path)
    assert [m.status for m in after.messages("a" * 32, conversation_id)] == ["interrupted"]
    after.close()


def test_migrations_upgrade_an_old_schema_and_keep_its_rows(tmp_path):
    path = tmp_path / "old.db"
    db = connect(path)
    migrations.apply(db, stop_before="m002_reply_status_and_figures")
    db.execute("INSERT INTO conversations VALUES ('c1', ?, 'Old chat', 1.0, 2.0)", [ALICE])
    db.execute("INSERT INTO messages (conversation_id, role, content, created_at) "
               "VALUES ('c1', 'user', 'from v1', 1.5)")
    assert "status" not in db.table("messages").columns_dict
    db.close()

    store = Store(path)
    [message] = store.messages(ALICE, "c1")
    assert (message.content, message.status, message.updated_at) == ("from v1", "complete", 1.5)
    assert message.dropped is None  # m003: no history was ever left out of its prompt
    assert message.token_ids is None  # m004: its tokens were never stored
    assert message.cached_tokens is None  # m005: nor how much of its prompt was cached
    assert store.list_conversations(ALICE)[0].pinned == 0  # m006: not pinned
    assert store.list_conversations(ALICE)[0].chat_settings == {}  # m007: config.yaml's
    applied = [m.name for m in migrations.applied(store.db)]
    assert applied == ["m001_initial", "m002_reply_status_and_figures", "m003_dropped_history",
                       "m004_reply_tokens", "m005_cached_tokens", "m006_pins_and_search",
                       "m007_chat_settings_and_presets", "m008_import_keys", "m009_attachments", "m010_devices",
                       "m011_message_writer"]
    store.close()
    Store(path).close()  # a second open applies nothing twice


def test_wal_mode_and_foreign_keys(store):
    db = sqlite_utils.Database(sqlite3.connect(store.path))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_many_threads_write_safely(store):
    convs = [store.create_conversation(ALICE, f"c{i}") for i in range(4)]
    errors = []

    def work(conv):
        try:
            for n in range(50):
                m = store.add_message(conv.id, "user", f"{conv.title}-{n}")
                store.update_message(m.id, content=f"{conv.title}-{n}!")
                store.list_conversations(ALICE)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in convs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for conv in convs:
        contents = [m.content for m in store.messages(ALICE, conv.id)]
        assert contents == [f"{conv.title}-{n}!" for n in range(50)]


def test_saving_a_reply_of_a_deleted_conversation_is_harmless(store):
    conv = store.create_conversation(ALICE, "t")
    reply = store.add_message(conv.id, "assistant", "", status="streaming")
    store.delete_conversation(ALICE, conv.id)
    store.update_message(reply.id, content="late", status="stopped")
    assert store.list_conversations(ALICE) == []


def test_a_reply_keeps_its_token_ids_and_bad_ones_are_ignored(store):
    conv = store.create_conversation(ALICE, "t")
    good = store.add_message(conv.id, "assistant", "Hi")
    bad = store.add_message(conv.id, "assistant", "Ho")
    store.update_message(good.id, tokens="[9707, 0]")
    store.update_message(bad.id, tokens="[9707,")  # e.g. edited by hand in the file
    read = {m.id: m for m in store.messages(ALICE, conv.id)}
    assert read[good.id].token_ids == [9707, 0]
    assert read[bad.id].token_ids is None and read[bad.id].content == "Ho"
