"""The chat service: what happens when a user sends a message, shared by every front end.

config.yaml is read once when a message arrives (`config()`); that frozen snapshot is passed
down to every step of the message (length check, prompt, sampling), so a save mid-reply applies
to the next message, never to half of this one. What the model reads is decided in context.py.

The user's message is committed before generation starts; the reply is committed while it
streams (at least once a second), and once more when it ends, however it ends: complete, stopped
(the consumer closed this generator) or error. A kill at any moment loses at most the last second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import psutil

from . import context, i18n
from .config import Config, ConfigSnapshot, ConfigWatcher
from .engine.contract import ChatEngine, Reply, Sampling, Stats
from .errors import GenerationError, MessageTooLong, ModelNotLoaded, NotFound, StorageFull
from .engine.startup import Snapshot
from .attachments import sources_line
from .library import Library, title_from
from .reading import Reading
from .store import COMPLETE, ERROR, STOPPED, STREAMING, Conversation, Message, Store

log = logging.getLogger(__name__)

SAVE_INTERVAL = 1.0  # seconds between commits of a streaming reply
# While nothing new arrives (prefill, waiting for the engine), the consumer still gets an update
# this often, so that a closed consumer (Stop, a closed tab) is noticed.
HEARTBEAT_INTERVAL = 0.25
# Streamed text reaches the page and API clients at most this often (a token every 20-80 ms
# would cost a page update each): 25 updates a second look continuous.
UPDATE_INTERVAL = 0.04
LOW_SPACE_MB = 200  # below this much free space for the history, the System panel warns


@dataclass
class ReplyUpdate:
    """The state of one reply, yielded at every new piece of text (and while waiting)."""
    conversation: Conversation
    message_id: int
    text: str
    status: str
    stats: Stats = field(default_factory=Stats)
    error: str | None = None
    notice: str | None = None  # told once per conversation: early messages are no longer read
    loading: Snapshot | None = None  # the model is still loading: how far it is


def draft_key(session: str) -> str:
    """The KV cache key of what a tab types in a new chat (it has no conversation id yet)."""
    return f"draft:{session}"


def wait_for_model(engine: ChatEngine, interval: float) -> Iterator[Snapshot]:
    """Block until the model is ready, yielding how far its loading is at once and then every
    `interval` seconds (so the waiter can say so, and notice that its consumer went away).
    Raises ModelNotLoaded once loading failed. Replies (page, /chat, terminal) and /v1 wait
    this way; an engine that is ready yields nothing."""
    while not engine.wait_ready(0):
        snapshot = engine.progress.snapshot()
        if snapshot.phase == "failed":  # told before the engine's wait gives up
            raise ModelNotLoaded(snapshot.error or "The model could not be loaded.")
        yield snapshot
        engine.wait_ready(interval)


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


class ChatService(Library, Reading):
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
            if conversation is None:  # the store waits (minutes) while another program holds
                conversation = self.store.create_conversation(  # the file locked
                    owner, title_from(text), settings=settings)
                if session is not None:  # what was typed in the new chat was prefilled under this
                    self.engine.adopt(draft_key(session), conversation.id)
            replacing = None
            if keep is not None and conversation_id:
                later = self.store.messages(owner, conversation_id)[max(keep, 0):]
                replacing = later[0].id if later else None
            message = self.store.add_message(conversation.id, "user", text, replacing_from=replacing)
            self.store_files(conversation.id, message.id, files)
            yield from self._reply(owner, conversation, session, config, base)

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

    def _save_progress(self, message_id: int, text: str) -> None:
        """Save a streaming reply so far; skipped (the final save waits) while the file is
        locked by another program or the disk is full, so that the words keep coming."""
        if self.history_busy():
            return
        try:
            self.store.update_message(message_id, content=text, wait_s=0)
        except (StorageFull, sqlite3.OperationalError) as exc:
            log.warning("A streaming reply is saved when it ends: %s", exc)

    def stop(self, session: str) -> str | None:
        """End the reply streaming for `session` (a Stop click); other sessions are untouched.

        The generation ends within one decode step and is saved as "stopped". Returns the id of
        the conversation it belongs to, or None when that session had nothing streaming.
        """
        with self._active_lock:
            active = self._active.get(session)
        if active is None:
            return None
        active[0].cancel.set()
        return active[1]

    def wait_saved(self, owner: str, conversation_id: str, *, timeout: float = 5.0) -> bool:
        """Wait (bounded) until no reply of the conversation is still streaming."""
        deadline = time.monotonic() + timeout
        while any(m.status == STREAMING for m in self.store.messages(owner, conversation_id)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _reply(self, owner: str, conversation: Conversation, session: str | None,
               config: Config, base: Config) -> Iterator[ReplyUpdate]:
        """Stream the reply to the conversation's last message, under `config` (the chat's
        own settings over `base`, config.yaml as the message arrived)."""
        try:  # while the model loads, say how far it is (and notice a closed consumer)
            for snapshot in wait_for_model(self.engine, HEARTBEAT_INTERVAL):
                yield ReplyUpdate(conversation, 0, "", STREAMING, loading=snapshot)
        except ModelNotLoaded as exc:  # loading failed: the reply is that error, saved as such
            error = str(exc)
            reply = self.store.add_message(conversation.id, "assistant", "", status=ERROR)
            self.store.update_message(reply.id, status=ERROR, error=error)
            yield ReplyUpdate(conversation, reply.id, "", ERROR, error=error)
            return
        sampling = Sampling(temperature=config.temperature, top_p=config.top_p,
                            max_new_tokens=config.max_new_tokens,
                            repetition_penalty=config.repetition_penalty)
        fitted = self._prompt(config, self.store.messages(owner, conversation.id))
        notice = (i18n.text("en", "dropped", budget=self.input_budget(config))
                  if fitted.newly_cut else None)
        reply = self.store.add_message(conversation.id, "assistant", "", status=STREAMING)
        parts: list[str] = []
        status, error, stats, generation = STREAMING, None, Stats(), None
        try:
            generation = self.engine.generate(fitted.messages, sampling, cache_key=conversation.id)
            stats = generation.stats
            if session is not None:
                with self._active_lock:
                    self._active[session] = (generation, conversation.id)
            saved_at = yielded_at = time.monotonic()
            shown = 0  # pieces the consumer has been handed
            for piece in generation:
                now = time.monotonic()
                if piece:
                    parts.append(piece)
                    if now - saved_at >= SAVE_INTERVAL:
                        self._save_progress(reply.id, "".join(parts))
                        saved_at = now
                # The first words at once, then at most one update per UPDATE_INTERVAL (what
                # the eye sees), and a heartbeat now and then while nothing new comes.
                due = UPDATE_INTERVAL if len(parts) > shown else HEARTBEAT_INTERVAL
                if shown and now - yielded_at < due:
                    continue
                if not shown and not parts and now - yielded_at < HEARTBEAT_INTERVAL:
                    continue
                yielded_at, shown = now, len(parts)
                yield ReplyUpdate(conversation, reply.id, "".join(parts), STREAMING, stats, None, notice)
            status = STOPPED if generation.cancel.is_set() else COMPLETE
        except GeneratorExit:  # the consumer went away: Stop, a closed tab, a reload
            status = STOPPED
            raise
        except GenerationError as exc:
            log.error("%s", exc, exc_info=exc.__cause__)
            status, error = ERROR, str(exc)
        finally:
            if generation is not None:
                generation.close()
                with self._active_lock:
                    if self._active.get(session, (None,))[0] is generation:
                        del self._active[session]
            if stats.ttft is not None:
                self.last_stats = stats
                self.measured_prefill(stats.prompt_tokens - stats.cached_tokens, stats.ttft)
            if status == COMPLETE and fitted.cited:  # where the excerpts it read came from
                parts.append("\n\n" + sources_line(list(fitted.cited)))
            if status == STREAMING:  # an unexpected exception is on its way up
                status, error = ERROR, "unexpected error, see the terminal"
            token_ids = generation.token_ids if generation is not None else None
            try:  # waits (minutes) while another program holds the file locked
                self.store.update_message(
                    reply.id, content="".join(parts), status=status, error=error,
                    prompt_tokens=stats.prompt_tokens, cached_tokens=stats.cached_tokens,
                    new_tokens=stats.new_tokens,
                    ttft=stats.ttft, tokens_per_s=stats.tokens_per_s, dropped=fitted.dropped,
                    tokens=json.dumps(token_ids) if token_ids else None)
            except StorageFull as exc:  # the reply is shown but not saved: say so
                status, error = ERROR, str(exc)
            if self._warmed is not None:  # warming is on: re-warm a hot-reloaded system prompt
                self.warm(base)
        yield ReplyUpdate(conversation, reply.id, "".join(parts), status, stats, error, notice)
