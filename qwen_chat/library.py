"""The conversations of one browser, as the chat service keeps them: list, find, open, pin,
rename, delete, export and import, a chat's own settings and the prompt presets. A mixin of
ChatService (chat.py), which answers messages; everything here is scoped to an owner id."""

from __future__ import annotations

import logging

from dataclasses import dataclass

from . import context, imports, presets, search, transfer
from .config import Config, ConfigSnapshot
from .engine.contract import ChatEngine
from .errors import ConfigError, NotFound
from .store import COMPLETE, Conversation, Message, Store

log = logging.getLogger(__name__)
TITLE_LENGTH = 40


@dataclass(frozen=True)
class ImportResult:
    source: str  # "ChatGPT", "DeepSeek", "Qwen Chat"
    added: int
    skipped: int  # imported before: not added again
    newest: Conversation | None  # the most recent one added (the page opens it)


def title_from(text: str) -> str:
    """A conversation's title: the first message, on one line, cut to a readable length."""
    line = " ".join(text.split())
    return line if len(line) <= TITLE_LENGTH else line[:TITLE_LENGTH - 1].rstrip() + "…"


class Library:
    store: Store
    engine: ChatEngine

    def config(self) -> ConfigSnapshot:  # ChatService's
        raise NotImplementedError

    # Conversations, always scoped to one browser's owner id -------------------------------
    def conversations(self, owner: str) -> list[Conversation]:
        return self.store.list_conversations(owner)

    def changes(self) -> tuple[int, int]:
        """Changes whenever the history does (any owner's, any process's): see Store.changes."""
        return self.store.changes()

    def exists(self, owner: str, conversation_id: str) -> bool:
        try:
            self.store.get_conversation(owner, conversation_id)
        except NotFound:
            return False
        return True

    def messages(self, owner: str, conversation_id: str) -> list[Message]:
        return self.store.messages(owner, conversation_id)

    # A chat's own settings, and presets ------------------------------------------------------
    def effective_config(self, chat_settings: dict | None, config: Config | None = None) -> Config:
        """`config` (config.yaml now if None) with a chat's own settings over it; settings that
        are no longer valid are left out (logged), config.yaml's values apply instead."""
        config = config or self.config().config
        try:
            return context.chat_config(config, chat_settings)
        except ConfigError as exc:
            log.warning("A chat's own settings are ignored: %s", exc)
            return config

    def check_chat_settings(self, chat_settings: dict) -> None:
        """ConfigError (naming the key, the value and what is allowed) if they are not valid."""
        context.chat_config(self.config().config, chat_settings)

    def chat_settings(self, owner: str, conversation_id: str) -> dict:
        return self.store.get_conversation(owner, conversation_id).chat_settings

    def set_chat_settings(self, owner: str, conversation_id: str, chat_settings: dict) -> None:
        self.check_chat_settings(chat_settings)
        self.store.set_settings(owner, conversation_id, chat_settings)

    def presets(self, owner: str) -> list[presets.Preset]:
        return presets.listed(self.store, owner)

    def save_preset(self, owner: str, name: str, system_prompt: str, *,
                    key: str | None = None) -> presets.Preset:
        return presets.save(self.store, owner, name, system_prompt, key=key)

    def remove_preset(self, owner: str, key: str) -> None:
        presets.remove(self.store, owner, key)

    def search(self, owner: str, query: str) -> list[search.Hit]:
        """`owner`'s conversations holding `query` in their title or messages (see search)."""
        return search.search(self.store, owner, query)

    def pin(self, owner: str, conversation_id: str, pinned: bool) -> None:
        self.store.pin_conversation(owner, conversation_id, pinned)

    def rename(self, owner: str, conversation_id: str, title: str) -> Conversation:
        return self.store.rename_conversation(owner, conversation_id, title_from(title) or "…")

    def delete(self, owner: str, conversation_id: str) -> None:
        self.store.delete_conversation(owner, conversation_id)
        self.engine.forget(conversation_id)

    def export(self, owner: str, conversation_id: str, kind: str) -> tuple[str, str]:
        """(file name, text) of a conversation as Markdown ("md") or JSON ("json")."""
        conversation = self.store.get_conversation(owner, conversation_id)
        messages = [m for m in self.store.messages(owner, conversation_id)
                    if m.role != "assistant" or m.content or m.status == COMPLETE]
        render = transfer.to_markdown if kind == "md" else transfer.to_json
        return transfer.file_name(conversation, f".{kind}"), render(conversation, messages)

    def export_all(self, owner: str) -> tuple[int, bytes]:
        return export_all(self.store, owner)

    def import_file(self, owner: str, raw: bytes) -> ImportResult:
        return import_file(self.store, owner, raw)


def export_all(store: Store, owner: str) -> tuple[int, bytes]:
    """(how many, a zip of) every conversation of `owner`, as Markdown and JSON."""
    items = [(c, store.messages(owner, c.id)) for c in store.list_conversations(owner)]
    return len(items), transfer.export_all(items)


def import_file(store: Store, owner: str, raw: bytes) -> ImportResult:
    """An export (ChatGPT's, DeepSeek's or this app's, told from `raw`'s content) added to
    `owner`'s conversations in one transaction; what was imported before is skipped.
    ImportRefused (one sentence) for a file that is none of them; nothing is written then."""
    source, conversations = imports.read(raw)
    for c in conversations:
        c.title = title_from(c.title) or title_from(next(
            (m["content"] for m in c.messages if m["role"] == "user"), "")) or "…"
    added, skipped = store.import_conversations(owner, conversations)
    newest = max((store.get_conversation(owner, i) for i in added),
                 key=lambda c: c.updated_at, default=None)
    return ImportResult(source, len(added), skipped, newest)
