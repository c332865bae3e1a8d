"""Finding old conversations by their titles and messages: SQLite FTS5 with the trigram
tokenizer (the tables and triggers are made by the store's migration m006).

The trigram index answers a query of 3 characters or more in any language, Chinese and
Japanese too, with no word segmentation, case-insensitively. Shorter queries (a 2-character
Chinese word such as 天气 is common) cannot use it: they scan with LIKE, which is still fast
enough for one person's history (bench/search.py: 10,000 conversations).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .store import Store

TRIGRAM = 3  # the shortest query the index can answer
SNIPPET_BEFORE, SNIPPET_AFTER = 24, 60  # characters shown around the match


@dataclass(frozen=True)
class Hit:
    conversation_id: str
    title: str
    updated_at: float
    snippet: str  # the matching message (or the title) around the match
    message_index: int | None  # the matching message's place in its conversation (0 = first)


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _phrase(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def snippet(text: str, query: str) -> str:
    """One line of `text` around the first match of `query` (case-insensitive)."""
    flat = " ".join(text.split())
    at = flat.casefold().find(query.casefold())
    if at < 0:
        return flat[:SNIPPET_BEFORE + SNIPPET_AFTER]
    start, end = max(0, at - SNIPPET_BEFORE), at + len(query) + SNIPPET_AFTER
    return ("…" if start else "") + flat[start:end] + ("…" if end < len(flat) else "")


def _has_index(store: Store) -> bool:
    return "messages_fts" in store.db.table_names()


def search(store: Store, owner: str, query: str, *, limit: int = 30) -> list[Hit]:
    """`owner`'s conversations whose title or messages hold `query`, most recent first; each
    once, with its latest matching message (or its title, if no message matches)."""
    query = " ".join(query.split())
    if not query:
        return []
    indexed = len(query) >= TRIGRAM and _has_index(store)
    try:
        return _found(store, owner, query, limit, indexed)
    except sqlite3.OperationalError:  # a query FTS5 cannot parse: scan instead
        if not indexed:
            raise
        return _found(store, owner, query, limit, False)


def _found(store: Store, owner: str, query: str, limit: int, indexed: bool) -> list[Hit]:
    if indexed:
        in_messages = ("SELECT rowid FROM messages_fts WHERE messages_fts MATCH :q")
        in_titles = ("SELECT rowid FROM conversations_fts WHERE conversations_fts MATCH :q")
        params = {"q": _phrase(query)}
    else:
        in_messages = "SELECT id FROM messages WHERE content LIKE :q ESCAPE '\\'"
        in_titles = "SELECT rowid FROM conversations WHERE title LIKE :q ESCAPE '\\'"
        params = {"q": _like(query)}
    params.update(owner=owner, limit=limit)
    sql = f"""
        WITH found AS (
            SELECT m.conversation_id AS cid, MAX(m.id) AS mid FROM messages m
            WHERE m.id IN ({in_messages}) GROUP BY m.conversation_id
        )
        SELECT c.id, c.title, c.updated_at, m.id AS mid, m.content,
               (SELECT COUNT(*) FROM messages e WHERE e.conversation_id = c.id
                AND e.id < m.id) AS place
        FROM conversations c
        LEFT JOIN found ON found.cid = c.id
        LEFT JOIN messages m ON m.id = found.mid
        WHERE c.owner = :owner AND (found.mid IS NOT NULL OR c.rowid IN ({in_titles}))
        ORDER BY c.updated_at DESC LIMIT :limit"""
    with store._lock:  # noqa: SLF001 - the store's one connection, under its lock
        rows = list(store.db.query(sql, params))
    return [Hit(r["id"], r["title"], r["updated_at"],
                snippet(r["content"] if r["mid"] is not None else r["title"], query),
                r["place"] if r["mid"] is not None else None) for r in rows]

