"""What the history holds, as plain frozen dataclasses: a conversation, a message, a reply's
status. store.py reads and writes them and hands them out (it re-exports these names)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

# A reply's status. "streaming" found at start-up means the app died mid-reply: "interrupted".
COMPLETE, STREAMING, STOPPED, ERROR, INTERRUPTED = (
    "complete", "streaming", "stopped", "error", "interrupted")


@dataclass(frozen=True)
class Conversation:
    id: str
    owner: str
    title: str
    created_at: float
    updated_at: float
    pinned: int = 0
    settings: str | None = None  # JSON: this chat's own settings (see chat_settings)

    @property
    def chat_settings(self) -> dict:
        """What this conversation sets differently from config.yaml ({} if nothing, or if
        what is stored cannot be read: config.yaml's values then)."""
        try:
            values = json.loads(self.settings) if self.settings else {}
        except ValueError:
            return {}
        return values if isinstance(values, dict) else {}


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: str
    role: str
    content: str
    created_at: float
    status: str = COMPLETE
    updated_at: float | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    new_tokens: int | None = None
    ttft: float | None = None
    tokens_per_s: float | None = None
    dropped: int | None = None  # replies: oldest messages left out of the prompt (context limit)
    tokens: str | None = None  # replies: the token ids generated, as JSON (see Engine.prompt_ids)
    cached_tokens: int | None = None  # replies: prompt tokens not prefilled at Send (cached)

    @property
    def token_ids(self) -> list[int] | None:
        """The reply's token ids, or None (not stored, or unreadable: its text is used then)."""
        try:
            ids = json.loads(self.tokens) if self.tokens else None
        except ValueError:
            return None
        return ids if isinstance(ids, list) and all(isinstance(i, int) for i in ids) else None


def row_to(cls, row: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in row.items() if k in names})
