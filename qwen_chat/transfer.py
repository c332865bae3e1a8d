"""Conversations out and in: Markdown and JSON exports, JSON imports, and a live backup.

The JSON export is the import format: {"format": "qwen-chat", "version": 1, "id": ..., "title":
..., "created_at", "updated_at", "messages": [{"role": "user" | "assistant" | "system", "content":
..., "status": ..., "created_at"}]}; `export_all` zips them with a Markdown copy each. Other
apps' exports are read by imports.py.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import time
import zipfile
from pathlib import Path

from .store import COMPLETE, Conversation, Message

FORMAT, VERSION = "qwen-chat", 1
ROLES = ("system", "user", "assistant")
MAX_IMPORT_BYTES = 16 * 1024 * 1024
MAX_IMPORT_MESSAGES = 10_000
_NAMES = {"user": "You", "assistant": "Qwen", "system": "System"}


class ImportRefused(ValueError):
    """The file is not a conversation this app exported (the message says what is wrong)."""


def file_name(conversation: Conversation, suffix: str) -> str:
    """A safe file name from the title ("Capital of France.md"), never a path."""
    stem = re.sub(r'[\\/:*?"<>|\x00-\x1f]+', " ", conversation.title).strip(" .")[:60]
    return f"{stem or 'conversation'}{suffix}"


def to_markdown(conversation: Conversation, messages: list[Message]) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(conversation.created_at))
    parts = [f"# {conversation.title}\n\n_{stamp}_\n"]
    for m in messages:
        note = "" if m.status == COMPLETE else f" _({m.status})_"
        parts.append(f"**{_NAMES.get(m.role, m.role)}**{note}:\n\n{m.content}\n")
    return "\n".join(parts)


def to_json(conversation: Conversation, messages: list[Message]) -> str:
    data = {"format": FORMAT, "version": VERSION, "id": conversation.id, "title": conversation.title,
            "created_at": conversation.created_at, "updated_at": conversation.updated_at,
            "messages": [{"role": m.role, "content": m.content, "status": m.status,
                          "created_at": m.created_at} for m in messages]}
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def export_all(conversations: list[tuple[Conversation, list[Message]]]) -> bytes:
    """A zip with every conversation as Markdown (to read) and JSON (to import again), named
    after its title; the same title twice gets " (2)"."""
    buffer, used = io.BytesIO(), set()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for conversation, messages in conversations:
            stem = file_name(conversation, "")
            name, n = stem, 1
            while name.lower() in used:
                n += 1
                name = f"{stem} ({n})"
            used.add(name.lower())
            archive.writestr(f"{name}.md", to_markdown(conversation, messages))
            archive.writestr(f"{name}.json", to_json(conversation, messages))
    return buffer.getvalue()


def parse_export(raw: bytes) -> tuple[str, list[dict]]:
    """(title, messages) from a JSON export; ImportRefused with the reason otherwise."""
    if len(raw) > MAX_IMPORT_BYTES:
        raise ImportRefused(f"the file is over {MAX_IMPORT_BYTES // (1024 * 1024)} MB")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        raise ImportRefused("the file is not JSON (export a conversation as JSON first)") from None
    return parse_export_data(data)


def parse_export_data(data) -> tuple[str, list[dict]]:
    """(title, messages) from a decoded JSON export; ImportRefused with the reason otherwise."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ImportRefused('the file is not a Qwen Chat export ("format": "qwen-chat")')
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages or len(messages) > MAX_IMPORT_MESSAGES:
        raise ImportRefused(f'"messages" must be a list of 1 to {MAX_IMPORT_MESSAGES:,} messages')
    out = []
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise ImportRefused(f"message {i + 1} needs a role ({', '.join(ROLES)}) and a text")
        status = m.get("status") if isinstance(m.get("status"), str) else COMPLETE
        out.append({"role": m["role"], "content": m["content"],
                    "status": COMPLETE if status == "streaming" else status})
    title = data.get("title") if isinstance(data.get("title"), str) else ""
    return title, out


def backup(db_path: Path, target: Path) -> Path:
    """Copy the database to `target` with VACUUM INTO: one consistent snapshot, safe while the
    app runs and writes (SQLite's own online copy; the file is compact and ready to open)."""
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists: choose a new file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(f"file:{Path(db_path).as_posix()}?mode=ro", uri=True, timeout=30)
    try:
        conn.execute("VACUUM INTO ?", [str(target)])
    finally:
        conn.close()
    return target
