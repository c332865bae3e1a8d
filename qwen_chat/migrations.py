"""The history file's schema, as sqlite-utils migrations applied in order when the store opens
(each recorded in the file once applied; a file from any earlier version is brought up to date).
A migration, once released, is never changed: a new one is added."""

from __future__ import annotations

import logging
import sqlite3

import sqlite_utils
from sqlite_utils.migrations import Migrations

log = logging.getLogger(__name__)

migrations = Migrations("qwen_chat")



@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE conversations (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, title TEXT NOT NULL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL)""")
    db.execute("""CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT, conversation_id TEXT NOT NULL
            REFERENCES conversations(id) ON DELETE CASCADE,
        role TEXT NOT NULL, content TEXT NOT NULL, created_at REAL NOT NULL)""")
    db.execute("CREATE INDEX idx_conversations_owner ON conversations(owner, updated_at)")
    db.execute("CREATE INDEX idx_messages_conversation ON messages(conversation_id, id)")


@migrations()
def m002_reply_status_and_figures(db: sqlite_utils.Database) -> None:
    """Replies are saved while they stream: record how each ended and how fast it came."""
    messages = db.table("messages")
    messages.add_column("status", str, not_null_default="complete")
    messages.add_column("updated_at", float)
    messages.add_column("error", str)
    for column in ("prompt_tokens", "new_tokens"):
        messages.add_column(column, int)
    for column in ("ttft", "tokens_per_s"):
        messages.add_column(column, float)
    db.execute("UPDATE messages SET updated_at = created_at")


@migrations()
def m003_dropped_history(db: sqlite_utils.Database) -> None:
    """How many of the oldest messages a reply's prompt left out (the context limit)."""
    db.table("messages").add_column("dropped", int)


@migrations()
def m004_reply_tokens(db: sqlite_utils.Database) -> None:
    """A reply's token ids as generated (JSON), so that later prompts reuse them exactly."""
    db.table("messages").add_column("tokens", str)


@migrations()
def m005_cached_tokens(db: sqlite_utils.Database) -> None:
    """How many of a reply's prompt tokens were already cached (earlier turns, a typed draft)."""
    db.table("messages").add_column("cached_tokens", int)


@migrations()
def m006_pins_and_search(db: sqlite_utils.Database) -> None:
    """Conversations can be pinned to the top; titles and messages get a full-text index
    (FTS5, trigram tokenizer: any language, Chinese too, without word segmentation), kept up to
    date by triggers. An SQLite without trigram (before 3.34) gets no index: search scans."""
    db.table("conversations").add_column("pinned", int, not_null_default=0)
    try:
        db.table("messages").enable_fts(["content"], tokenize="trigram", create_triggers=True)
        db.table("conversations").enable_fts(["title"], tokenize="trigram", create_triggers=True)
    except sqlite3.OperationalError as exc:
        log.warning("No full-text index for search (%s): search reads every message.", exc)


@migrations()
def m007_chat_settings_and_presets(db: sqlite_utils.Database) -> None:
    """A conversation's own settings (JSON: what differs from config.yaml), and each browser's
    prompt presets (see presets.py: built-in ones it edited or removed, and its own)."""
    db.table("conversations").add_column("settings", str)
    db.execute("""CREATE TABLE presets (
        owner TEXT NOT NULL, key TEXT NOT NULL, name TEXT NOT NULL, system_prompt TEXT NOT NULL,
        hidden INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL, PRIMARY KEY (owner, key))""")


@migrations()
def m008_import_keys(db: sqlite_utils.Database) -> None:
    """Where an imported conversation came from ("chatgpt:<id>", ...; imports.py), so that the
    same export imported again adds nothing twice."""
    db.table("conversations").add_column("import_key", str)
    db.execute("CREATE INDEX conversations_import_key ON conversations (owner, import_key)")


@migrations()
def m009_attachments(db: sqlite_utils.Database) -> None:
    """Files attached to messages (attachments.py): each one's text, and its excerpts indexed
    for search (FTS5, trigram: Chinese too). They go with their conversation and message."""
    db.execute("""CREATE TABLE attachments (
        id INTEGER PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        message_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
        name TEXT NOT NULL, kind TEXT NOT NULL, tokens INTEGER NOT NULL, places INTEGER NOT NULL,
        text TEXT NOT NULL, created_at REAL NOT NULL)""")
    db.execute("CREATE INDEX attachments_conversation ON attachments (conversation_id)")
    db.execute("""CREATE TABLE attachment_chunks (
        id INTEGER PRIMARY KEY,
        attachment_id INTEGER NOT NULL REFERENCES attachments(id) ON DELETE CASCADE,
        place TEXT NOT NULL, text TEXT NOT NULL)""")
    db.execute("CREATE INDEX attachment_chunks_attachment ON attachment_chunks (attachment_id)")
    try:
        db.table("attachment_chunks").enable_fts(["text"], tokenize="trigram", create_triggers=True)
    except sqlite3.OperationalError as exc:
        log.warning("No full-text index for attachments (%s): their first excerpts are used.", exc)


@migrations()
def m010_devices(db: sqlite_utils.Database) -> None:
    """Devices paired over the local network (devices.py): whose conversations each sees, its
    token's SHA-256, when it was last seen and whether it was revoked."""
    db.execute("""CREATE TABLE devices (
        id INTEGER PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, last_seen REAL,
        revoked_at REAL)""")
    db.execute("CREATE INDEX devices_owner ON devices (owner)")


@migrations()
def m011_message_writer(db: sqlite_utils.Database) -> None:
    """The process writing a streaming reply (its pid): a store opened by another process (the
    terminal chat beside the page) leaves that reply streaming while its writer lives."""
    db.execute("ALTER TABLE messages ADD COLUMN writer INTEGER")
