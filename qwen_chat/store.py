"""Conversations and messages in SQLite, through sqlite-utils. Plain dataclasses out, no SQL leaks.

One connection shared by Gradio's worker threads (`check_same_thread=False`), every use under one
lock: the app's write rate (a few rows a second) is far below what one serialized connection
handles, and it rules out "database is locked" between our own threads. WAL keeps a reader in
another process (a backup, sqlite3 CLI) from blocking us.

Storage faults a user's computer has (`_write`): another program holding the file's write lock
(a SQLite browser mid-edit) makes a write wait and retry, for minutes, with one line in the
terminal and `busy` set for the page; nothing is lost or written twice (a failed transaction is
rolled back whole). A full disk raises StorageFull: one sentence naming the folder and its free
space.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import psutil
import sqlite_utils
from sqlite_utils.db import NotFoundError

from .errors import NotFound, StorageFull
from .migrations import migrations
from .records import (COMPLETE, ERROR, INTERRUPTED, STOPPED, STREAMING,  # noqa: F401
                      Conversation, Message, row_to)

log = logging.getLogger(__name__)


BUSY_TIMEOUT_MS = 2000  # SQLite's own wait for a lock, per try; then _write says so and retries
LOCK_WAIT_S = 600.0  # how long a write keeps retrying while another program holds the lock
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_FULL = 5, 6, 13


def _writing(pid: int | None) -> bool:
    """Whether the process `pid` (a streaming reply's writer) is another one still running."""
    return pid is not None and pid != os.getpid() and psutil.pid_exists(pid)


def connect(path: Path) -> sqlite_utils.Database:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    db = sqlite_utils.Database(conn)
    # Pragmas outside any transaction. WAL + NORMAL survives a process kill without corruption.
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA foreign_keys=ON")
    return db


class Store:
    """The app's SQLite file. Runs pending migrations and repairs an interrupted reply on open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.db = connect(self.path)
        self._lock = threading.RLock()
        self._closed = False
        self.busy_since: float | None = None  # a write has been waiting for a lock since then
        self._writes = 0  # transactions committed through this store (see changes)

        def repair() -> None:
            migrations.apply(self.db)
            # Replies left streaming by a process that is gone (a crash, a kill) are marked
            # interrupted; those another running process is writing (the page, while the
            # terminal chat opens the file) are left to it.
            ended = [row[0] for row in self.db.execute(
                         "SELECT id, writer FROM messages WHERE status = ?", [STREAMING])
                     if not _writing(row[1])]
            for message_id in ended:
                self.db.execute("UPDATE messages SET status = ? WHERE id = ?",
                                [INTERRUPTED, message_id])
        self._write(repair)

    def changes(self) -> tuple[int, int]:
        """A value that changes whenever the file does: (commits through this store, SQLite's
        data_version, which changes with commits of other connections: the terminal chat)."""
        with self._lock:
            return self._writes, self.db.execute("PRAGMA data_version").fetchone()[0]

    def _write(self, write, *, wait_s: float = LOCK_WAIT_S):
        """Run `write()` (one transaction) under the lock; while another program holds the
        file's lock, retry with growing pauses for up to `wait_s` seconds (our lock is let go
        between tries, so reads go on). A full disk raises StorageFull."""
        deadline, pause = time.monotonic() + wait_s, 0.1
        while True:
            try:
                with self._lock:
                    result = write()
                    self._writes += 1
                if self.busy_since is not None:
                    self.busy_since = None
                    log.warning("Saved: the history file %s is free again.", self.path)
                return result
            except sqlite3.OperationalError as exc:
                code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
                if code == SQLITE_FULL or "full" in str(exc):
                    message = self.full_message()
                    log.warning("%s", message)  # one line in the terminal, no traceback
                    raise StorageFull(message) from None
                if code not in (SQLITE_BUSY, SQLITE_LOCKED):
                    raise
                if self.busy_since is None:  # told once, until a write goes through again
                    self.busy_since = time.time()
                    log.warning("The history file %s is open in another program, which holds "
                                "it locked: waiting to save. Close that program, or end its "
                                "edit, to go on.", self.path)
                if time.monotonic() > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def free_mb(self) -> float | None:
        """Free space on the disk holding the history file, in MB (None if it cannot be read)."""
        try:
            return shutil.disk_usage(self.path.parent).free / 2**20
        except OSError:
            return None

    def full_message(self) -> str:
        free_mb = self.free_mb()
        free = "free space unknown" if free_mb is None else f"{free_mb:,.0f} MB free"
        return (f"Could not save: the disk holding {self.path.parent} is full ({free}). Free "
                f"some space (or set `data_dir:` in config.yaml to another disk) and send again.")

    def close(self) -> None:
        """Close the database (its write-ahead log is folded back into the file)."""
        with self._lock:
            self._closed = True
            self.db.close()

    # Conversations -------------------------------------------------------------------------
    def create_conversation(self, owner: str, title: str, *,
                            settings: dict | None = None) -> Conversation:
        now = time.time()
        # 128 random bits: a conversation id is not guessable from another browser.
        row = dict(id=secrets.token_hex(16), owner=owner, title=title, created_at=now,
                   updated_at=now, settings=json.dumps(settings) if settings else None)
        self._write(lambda: self.db.table("conversations").insert(row))
        return Conversation(**row)

    def list_conversations(self, owner: str) -> list[Conversation]:
        with self._lock:
            rows = list(self.db.query(
                "SELECT * FROM conversations WHERE owner = ? "
                "ORDER BY pinned DESC, updated_at DESC, rowid DESC",
                [owner]))
        return [row_to(Conversation, r) for r in rows]

    def get_conversation(self, owner: str, conversation_id: str) -> Conversation:
        with self._lock:
            rows = list(self.db.query(
                "SELECT * FROM conversations WHERE id = ? AND owner = ?",
                [conversation_id, owner]))
        if not rows:
            raise NotFound(f"Conversation {conversation_id!r} not found.")
        return row_to(Conversation, rows[0])

    def rename_conversation(self, owner: str, conversation_id: str, title: str) -> Conversation:
        self.get_conversation(owner, conversation_id)
        self._write(lambda: self.db.table("conversations").update(conversation_id, {"title": title}))
        return self.get_conversation(owner, conversation_id)

    def pin_conversation(self, owner: str, conversation_id: str, pinned: bool) -> None:
        self.get_conversation(owner, conversation_id)
        self._write(lambda: self.db.table("conversations").update(
            conversation_id, {"pinned": int(pinned)}))

    def set_settings(self, owner: str, conversation_id: str, settings: dict) -> None:
        self.get_conversation(owner, conversation_id)
        self._write(lambda: self.db.table("conversations").update(
            conversation_id, {"settings": json.dumps(settings) if settings else None}))

    # Presets ---------------------------------------------------------------------------------
    def presets(self, owner: str) -> list[dict]:
        """This owner's preset rows (their own, and built-in ones they edited or removed)."""
        with self._lock:
            return list(self.db.query("SELECT * FROM presets WHERE owner = ? ORDER BY rowid",
                                      [owner]))

    def put_preset(self, owner: str, key: str, name: str, system_prompt: str, *,
                   hidden: bool = False) -> None:
        row = dict(owner=owner, key=key, name=name, system_prompt=system_prompt,
                   hidden=int(hidden), updated_at=time.time())
        self._write(lambda: self.db.table("presets").upsert(row, pk=("owner", "key")))

    def delete_conversation(self, owner: str, conversation_id: str) -> None:
        def delete() -> None:
            with self.db.atomic():
                self.get_conversation(owner, conversation_id)
                self.db.execute("DELETE FROM messages WHERE conversation_id = ?", [conversation_id])
                self.db.execute("DELETE FROM conversations WHERE id = ?", [conversation_id])
        self._write(delete)

    # Messages ------------------------------------------------------------------------------
    def add_message(self, conversation_id: str, role: str, content: str, *,
                    status: str = COMPLETE, replacing_from: int | None = None) -> Message:
        """Insert and commit a message (and bump its conversation to the top of the list).
        `replacing_from`: a message id; it and every later message of the conversation are
        deleted in the same transaction (an edited message replaces the turns after it), the
        files attached to that one going with the new message (an edit or retry keeps them)."""
        now = time.time()
        row = dict(conversation_id=conversation_id, role=role, content=content,
                   created_at=now, updated_at=now, status=status,
                   writer=os.getpid() if status == STREAMING else None)
        def insert() -> int:
            with self.db.atomic():  # rolled back whole if it fails: a retry never doubles it
                table = self.db.table("messages")
                table.insert(row)
                message_id = table.last_rowid
                if replacing_from is not None:
                    self.db.execute("UPDATE attachments SET message_id = ? WHERE message_id = ?",
                                    [message_id, replacing_from])
                    self.db.execute("DELETE FROM messages WHERE conversation_id = ? AND id >= ? "
                                    "AND id != ?", [conversation_id, replacing_from, message_id])
                self.db.table("conversations").update(conversation_id, {"updated_at": now})
            return message_id
        return row_to(Message, {**row, "id": self._write(insert)})

    def update_message(self, message_id: int, *, wait_s: float = LOCK_WAIT_S, **changes) -> None:
        """Commit new content, status or figures of a message (used while a reply streams).
        `wait_s`: how long to retry while the file is locked (see _write)."""
        changes["updated_at"] = time.time()
        if self._closed:  # a reply still ending while the app shuts down
            log.warning("Reply %s ended after the database was closed: it stays marked "
                        "streaming and is marked interrupted at the next start.", message_id)
            return
        def update() -> None:
            with contextlib.suppress(NotFoundError):  # its conversation was deleted
                self.db.table("messages").update(message_id, changes)
        self._write(update, wait_s=wait_s)

    def import_conversations(self, owner: str, conversations: list) -> tuple[list[str], int]:
        """Add `conversations` (imports.Imported: key, title, times, messages) for `owner` in one
        transaction, all or none, skipping those whose key this owner already has (the same
        export imported again). Returns (the ids added, how many were already there)."""
        added: list[str] = []
        skipped = 0

        def insert() -> None:
            nonlocal skipped
            added.clear()
            skipped = 0
            with self.db.atomic():
                for c in conversations:
                    if c.key and self.db.execute(
                            "SELECT 1 FROM conversations WHERE owner = ? AND import_key = ?",
                            [owner, c.key]).fetchone():
                        skipped += 1
                        continue
                    row = dict(id=secrets.token_hex(16), owner=owner, title=c.title,
                               created_at=c.created_at, updated_at=c.updated_at, import_key=c.key)
                    self.db.table("conversations").insert(row)
                    self.db.table("messages").insert_all(
                        dict(conversation_id=row["id"], role=m["role"], content=m["content"],
                             status=m["status"], created_at=m["created_at"],
                             updated_at=m["created_at"]) for m in c.messages)
                    added.append(row["id"])
        self._write(insert)
        return added, skipped

    def messages(self, owner: str, conversation_id: str) -> list[Message]:
        with self._lock:
            self.get_conversation(owner, conversation_id)
            rows = list(self.db.query(
                "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", [conversation_id]))
        return [row_to(Message, r) for r in rows]
