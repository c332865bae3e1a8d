"""Search and pins on a real SQLite file, through the store and the search module."""

from __future__ import annotations

import sqlite3

from qwen_chat import search
from qwen_chat.store import Store

OWNER, OTHER = "o" * 32, "p" * 32


def test_chinese_and_english_queries_find_their_conversation(tmp_path):
    store = Store(tmp_path / "chat.db")
    trip = store.create_conversation(OWNER, "Trip plans")
    store.add_message(trip.id, "user", "明天的天气怎么样？我想去北京旅游")
    store.add_message(trip.id, "assistant", "Beijing will be sunny. Take a Hat!")
    code = store.create_conversation(OWNER, "Python code")
    store.add_message(code.id, "user", "How do I sort a list in Python?")
    store.add_message(code.id, "assistant", "Use sorted(): 100% safe_ok")
    found = lambda q: [(h.conversation_id, h.message_index) for h in search.search(store, OWNER, q)]  # noqa: E731
    assert found("天气") == [(trip.id, 0)]  # two characters: below the trigram index
    assert found("北京旅游") == [(trip.id, 0)]  # four: through the index
    assert found("hat") == found("HAT") == [(trip.id, 1)]
    assert found("trip") == [(trip.id, None)]  # the title only
    assert found("python") == [(code.id, 0)]
    assert found("100%") == found("safe_") == [(code.id, 1)]  # LIKE wildcards are text here
    assert found('"quo') == found("zebra") == found("  ") == []
    assert search.search(store, OTHER, "天气") == []  # another browser's are not searched
    [hit] = search.search(store, OWNER, "sunny")
    assert hit.title == "Trip plans" and "sunny" in hit.snippet
    store.close()


def test_the_index_follows_edits_streamed_replies_and_deletions(tmp_path):
    store = Store(tmp_path / "chat.db")
    conv = store.create_conversation(OWNER, "A chat")
    store.add_message(conv.id, "user", "first words")
    reply = store.add_message(conv.id, "assistant", "", status="streaming")
    store.update_message(reply.id, content="partial answer about volcanoes")
    assert [h.message_index for h in search.search(store, OWNER, "volcano")] == [1]
    store.add_message(conv.id, "user", "replaced words", replacing_from=reply.id - 1)
    assert search.search(store, OWNER, "volcano") == [] and search.search(store, OWNER, "first") == []
    assert len(search.search(store, OWNER, "replaced")) == 1
    store.rename_conversation(OWNER, conv.id, "Geology")
    assert len(search.search(store, OWNER, "geolog")) == 1
    store.delete_conversation(OWNER, conv.id)
    assert search.search(store, OWNER, "replaced") == []
    with sqlite3.connect(tmp_path / "chat.db") as conn:  # nothing left behind in the index
        assert conn.execute("SELECT COUNT(*) FROM messages_fts").fetchone() == (0,)
    store.close()


def test_a_history_from_before_search_is_indexed_when_the_app_updates(tmp_path):
    """A chat.db made before migration m006 (no index): its messages are found after it."""
    path = tmp_path / "chat.db"
    store = Store(path)
    conv = store.create_conversation(OWNER, "Old")
    store.add_message(conv.id, "user", "an old question about 天气")
    store.close()
    with sqlite3.connect(path) as conn:  # back to the schema of m005
        for table in ("messages_fts", "conversations_fts"):
            conn.execute(f"DROP TABLE {table}")
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute("ALTER TABLE conversations DROP COLUMN pinned")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm006_pins_and_search'")
    store = Store(path)
    assert [h.conversation_id for h in search.search(store, OWNER, "old question")] == [conv.id]
    assert [h.conversation_id for h in search.search(store, OWNER, "天气")] == [conv.id]
    store.close()


def test_pinned_conversations_come_first(tmp_path):
    store = Store(tmp_path / "chat.db")
    old = store.create_conversation(OWNER, "old")
    new = store.create_conversation(OWNER, "new")
    store.add_message(new.id, "user", "hi")
    assert [c.title for c in store.list_conversations(OWNER)] == ["new", "old"]
    store.pin_conversation(OWNER, old.id, True)
    assert [(c.title, c.pinned) for c in store.list_conversations(OWNER)] == [("old", 1), ("new", 0)]
    store.pin_conversation(OWNER, old.id, False)
    assert [c.title for c in store.list_conversations(OWNER)] == ["new", "old"]
    store.close()
