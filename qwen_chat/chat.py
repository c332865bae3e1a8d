"""The chat service: what happens when a user sends a message, shared by every front end.

config.yaml is read once when a message arrives (`config()`); that frozen snapshot is passed
down to every step of the message (length check, prompt, sampling), so a save mid-reply applies
to the next message, never to half of this one. What the model reads is decided in context.py.

The user's message is committed before generation starts; the reply is streamed and saved as it
grows by the service's Replying part (replying.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from typing import Iterator

import psutil

from . import context
from .config import Config, ConfigSnapshot, ConfigWatcher
from .engine.contract import ChatEngine, Reply, Stats
from .engine.startup import Snapshot
from .errors import MessageTooLong, ModelNotLoaded, NotFound
from .library import Library, title_from
from .reading import Reading
from .replying import ReplyUpdate, Replying, wait_for_model  # noqa: F401 - for the front ends
from .store import STOPPED, Conversation, Message, Store

log = logging.getLogger(__name__)

LOW_SPACE_MB = 200  # below this much free space for the history, the System panel warns


def draft_key(session: str) -> str:
    """The KV cache key of what a tab types in a new chat (it has no conversation id yet)."""
    return f"draft:{session}"


def config_warnings(snapshot: ConfigSnapshot, told: int | None) -> list[tuple[str, dict]]:
    """What a page last told about config version `told` should tell its user now: the
    refused save and the keys waiting for a restart, as (i18n key, values). Each page keeps
    its own `told`, so every open page tells its user once per saved change."""
    if snapshot.version == told:
        return []
    notes = []
    if snapshot.error:
        notes.append(("config_invalid", {"error": snapshot.error}))
    if snapshot.restart_needed:
        notes.append(("restart_needed", {"keys": ", ".join(snapshot.restart_needed)}))
    return notes


class ChatService(Library, Reading, Replying):
    def __init__(self, store: Store, engine: ChatEngine, settings: ConfigWatcher):
        self.store, self.engine, self.settings = store, engine, settings
        self._init_reading()
        # session -> (its reply being generated, that reply's conversation id)
        self._active: dict[str, tuple[Reply, str]] = {}
        self._active_lock = threading.Lock()
        self._warmed: str | None = None  # the system prompt whose prefix the engine has cached
        self._sending: dict[str, int] = {}  # session -> its messages being stored or answered
        self.last_stats: Stats | None = None  # of the last reply that produced a token

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every reply being generated, for any front end (each is saved as stopped by its
        stream, or marked interrupted at the next start if its stream is gone), and wait."""
        self.engine.stop_all(timeout)

    def config(self) -> ConfigSnapshot:
        """config.yaml now, for one message: read once when it arrives, then passed down."""
        return self.settings.snapshot()

    def warm(self, config: Config | None = None) -> None:
        """Have the engine pre-fill the system prompt (`config`'s, else the current one), the
        start of every new chat, so that a first message only prefills its own words. Runs in
        the background; does nothing when that system prompt is already cached."""
        config = config or self.config().config
        if config.system_prompt == self._warmed:
            return
        self._warmed = config.system_prompt
        messages = context.system_messages(config)

        def run() -> None:
            try:
                self.engine.warm(messages)  # waits for the model when it is still loading
            except ModelNotLoaded:
                pass  # the page and the terminal already say why
            except Exception:  # noqa: BLE001 - only a speed-up: chats work without it
                log.exception("Could not pre-fill the system prompt")

        threading.Thread(target=run, daemon=True, name="qwen-chat-warm").start()

    def system(self) -> dict:
        """What runs, for the page's System panel: model, precision, threads, batch, memory,
        and the last reply's speed (any browser's: it is the machine's speed)."""
        last = self.last_stats
        return {"model": self.engine.name or "?",
                "precision": self.engine.precision, "loading": self.loading(),
                "threads": self.engine.threads, "max_batch": self.engine.max_batch,
                "memory_mb": psutil.Process().memory_info().rss / 2**20,
                "kv_cache_mb": self.engine.kv_bytes / 2**20,
                "data_dir": str(self.store.path.parent), "disk_free_mb": self.store.free_mb(),
                "history_busy": self.history_busy(),
                "ttft": last.ttft if last else None,
                "tokens_per_s": last.tokens_per_s if last else None}

    def loading(self) -> Snapshot | None:
        """How far the model's loading is; None once it is ready (or for a remote engine)."""
        if self.engine.ready:
            return None
        return self.engine.progress.snapshot()

    # Replies --------------------------------------------------------------------------------
    def send(self, owner: str, conversation_id: str | None, text: str, *,
             session: str | None = None, config: Config | None = None,
             keep: int | None = None, settings: dict | None = None,
             files: list[str] | None = None) -> Iterator[ReplyUpdate]:
        """Store the user's message (a new conversation if none is given), then stream a reply.

        A message with nothing but white space is ignored: nothing is stored or yielded.
        `session` names the caller (a browser tab) so that `stop(session)` can end this reply.
        `config`: the settings the caller read when the message arrived (read here if None).
        `keep`: the message goes after the conversation's first `keep` messages, replacing the
        later ones (an edited message, a retry), in one transaction; None: after all of them.
        `settings`: a new conversation's own settings (see set_chat_settings); an existing one
        uses those stored with it. `files`: documents attached to the message (paths of
        files read with read_file before: reading.py), stored with it.
        """
        if not text or not text.strip():
            return
        base = config or self.config().config
        conversation = self.store.get_conversation(owner, conversation_id) if conversation_id \
            else None
        config = self.effective_config(
            conversation.chat_settings if conversation else settings, base)
        self.check_length(text, config)
        with self._in_flight(session):
            replacing = None
            if keep is not None and conversation_id:
                later = self.store.messages(owner, conversation_id)[max(keep, 0):]
                replacing = later[0].id if later else None
            conversation = self._store_user(owner, conversation, text, settings=settings,
                                            files=files, session=session, replacing=replacing)
            yield from self._reply(owner, conversation, session, config, base)

    def _store_user(self, owner: str, conversation: Conversation | None, text: str, *,
                    settings: dict | None, files: list[str] | None, session: str | None = None,
                    replacing: int | None = None) -> Conversation:
        """Store the user's message with its files, in a new conversation if None is given
        (what was typed in a new chat was prefilled under the tab's `session`: adopted). The
        store waits (minutes) while another program holds the file locked."""
        if conversation is None:
            conversation = self.store.create_conversation(owner, title_from(text), settings=settings)
            if session is not None:
                self.engine.adopt(draft_key(session), conversation.id)
        message = self.store.add_message(conversation.id, "user", text, replacing_from=replacing)
        self.store_files(conversation.id, message.id, files)
        return conversation

    def keep_unanswered(self, owner: str, conversation_id: str | None, text: str, *,
                        settings: dict | None = None, files: list[str] | None = None) -> str:
        """A message stopped before its reply began (it waited for room in the batch): stored
        as sent, with its files and an empty reply marked stopped, so that nothing typed is
        lost. Returns its conversation's id (a new one if None is given)."""
        conversation = self.store.get_conversation(owner, conversation_id) if conversation_id else None
        conversation = self._store_user(owner, conversation, text, settings=settings, files=files)
        self.store.add_message(conversation.id, "assistant", "", status=STOPPED)
        return conversation.id

    @contextlib.contextmanager
    def _in_flight(self, session: str | None) -> Iterator[None]:
        if session is None:
            yield
            return
        with self._active_lock:
            self._sending[session] = self._sending.get(session, 0) + 1
        try:
            yield
        finally:
            with self._active_lock:
                self._sending[session] -= 1
                if not self._sending[session]:
                    del self._sending[session]

    def sending(self, session: str) -> bool:
        """True while a message of `session` (a tab) is being stored or answered."""
        with self._active_lock:
            return session in self._sending

    def history_busy(self) -> bool:
        """True while a save waits for the history file, locked by another program."""
        return self.store.busy_since is not None

    def draft(self, owner: str, conversation_id: str | None, text: str, *,
              session: str, settings: dict | None = None,
              files: list[str] | None = None) -> threading.Event | None:
        """The user is typing `text` (not sent yet): have the engine prefill the prompt it would
        make, while idle, so that Send only prefills what changed since. `session` names the
        tab, whose new chat has no conversation yet. Returns the engine's event (set once
        prefilled, replaced or skipped), or None when there is nothing to prefill."""
        if not (text.strip() or files) or not self.engine.ready:
            return None
        try:
            stored = self.store.messages(owner, conversation_id) if conversation_id else []
            if conversation_id:
                settings = self.chat_settings(owner, conversation_id)
        except NotFound:  # deleted in another tab: Send will say so
            return None
        config = self.effective_config(settings)
        if len(text) > context.CHARS_PER_TOKEN_LIMIT * self.input_budget(config):
            return None
        draft = Message(0, conversation_id or "", "user", self.draft_text(text, files), time.time())
        try:  # the prompt _reply will build once the message is stored
            fitted = self._prompt(config, [*stored, draft])
        except MessageTooLong:
            return None
        return self.engine.prepare(fitted.messages, conversation_id or draft_key(session))

    def input_budget(self, config: Config | None = None) -> int:
        """Prompt tokens allowed for a message under `config` (the current one if None)."""
        config = config or self.config().config
        known = self.engine.context_length if self.engine.ready else None
        return context.input_budget(config, known)

    def check_length(self, text: str, config: Config | None = None) -> None:
        """Refuse (MessageTooLong, nothing stored) a message that cannot fit in the prompt.
        Before the model is ready only its characters are counted; its tokens are counted
        when its prompt is fitted, before the reply starts."""
        config = config or self.config().config
        context.check_length(text, config, budget=self.input_budget(config),
                             count=self.engine.count_tokens if self.engine.ready else None)

    def _prompt(self, config: Config, stored: list[Message]) -> context.Fitted:
        """What the model reads to answer the last of `stored` (a conversation's messages),
        attached documents included (reading.py)."""
        budget = self.input_budget(config)
        stored, cited = self.with_documents(stored, budget)
        fitted = context.build(config, stored, budget=budget, count=self.engine.count_tokens)
        return dataclasses.replace(fitted, cited=tuple(cited))
