"""The chat service: what happens when a user sends a message, shared by every front end.

The user's message is committed before generation starts; the reply is committed while it
streams (at least once a second), and once more when it ends, however it ends: complete, stopped
(the consumer closed this generator) or error. A kill at any moment loses at most the last second.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import psutil

from . import i18n, transfer
from .config import ConfigWatcher
from .engine.contract import ChatEngine, Reply, Sampling, Stats
from .errors import GenerationError, MessageTooLong, ModelNotLoaded, NotFound
from .engine.startup import Snapshot
from .store import COMPLETE, ERROR, STOPPED, STREAMING, Conversation, Message, Store

log = logging.getLogger(__name__)

SAVE_INTERVAL = 1.0  # seconds between commits of a streaming reply
# While nothing new arrives (prefill, waiting for the engine), the consumer still gets an update
# this often, so that a closed consumer (Stop, a closed tab) is noticed.
HEARTBEAT_INTERVAL = 0.25
# Streamed text reaches the page and API clients at most this often (a token every 20-80 ms
# would cost a page update each): 25 updates a second look continuous.
UPDATE_INTERVAL = 0.04
TITLE_LENGTH = 40
# A message longer than this many characters per allowed token is refused without tokenizing it.
CHARS_PER_TOKEN_LIMIT = 16
# Once history must be cut, cut it to this share of max_input_tokens: the prompt's start then
# stays the same for several turns, so the KV cache keeps being reused.
REFILL = 0.75
# Replies that the model sees again as history: what the user saw, minus failures.
_HISTORY_STATUSES = {COMPLETE, STOPPED, "interrupted"}


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


def title_from(text: str) -> str:
    """A conversation's title: the first message, on one line, cut to a readable length."""
    line = " ".join(text.split())
    return line if len(line) <= TITLE_LENGTH else line[:TITLE_LENGTH - 1].rstrip() + "…"


class ChatService:
    def __init__(self, store: Store, engine: ChatEngine, settings: ConfigWatcher):
        self.store, self.engine, self.settings = store, engine, settings
        # session -> (its reply being generated, that reply's conversation id)
        self._active: dict[str, tuple[Reply, str]] = {}
        self._active_lock = threading.Lock()
        self._warmed: str | None = None  # the system prompt whose prefix the engine has cached
        self.last_stats: Stats | None = None  # of the last reply that produced a token

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every reply being generated, for any front end (each is saved as stopped by its
        stream, or marked interrupted at the next start if its stream is gone), and wait."""
        self.engine.stop_all(timeout)

    def warm(self) -> None:
        """Have the engine pre-fill the current system prompt, the start of every new chat, so
        that a first message only prefills its own words. Runs in the background; does nothing
        when that system prompt is already cached."""
        system = self.settings.current().system_prompt
        if system == self._warmed:
            return
        self._warmed = system
        messages = [{"role": "system", "content": system}] if system.strip() else []

        def run() -> None:
            try:
                self.engine.warm(messages)  # waits for the model when it is still loading
            except ModelNotLoaded:
                pass  # the page and the terminal already say why
            except Exception:  # noqa: BLE001 - only a speed-up: chats work without it
                log.exception("Could not pre-fill the system prompt")

        threading.Thread(target=run, daemon=True, name="qwen-chat-warm").start()

    # Conversations, always scoped to one browser's owner id -------------------------------
    def conversations(self, owner: str) -> list[Conversation]:
        return self.store.list_conversations(owner)

    def exists(self, owner: str, conversation_id: str) -> bool:
        try:
            self.store.get_conversation(owner, conversation_id)
        except NotFound:
            return False
        return True

    def messages(self, owner: str, conversation_id: str) -> list[Message]:
        return self.store.messages(owner, conversation_id)

    def rename(self, owner: str, conversation_id: str, title: str) -> Conversation:
        return self.store.rename_conversation(owner, conversation_id, title_from(title) or "…")

    def delete(self, owner: str, conversation_id: str) -> None:
        self.store.delete_conversation(owner, conversation_id)
        self.engine.forget(conversation_id)

    def system(self) -> dict:
        """What runs, for the page's System panel: model, precision, threads, batch, memory,
        and the last reply's speed (any browser's: it is the machine's speed)."""
        last = self.last_stats
        return {"model": self.engine.name or "?",
                "precision": self.engine.precision, "loading": self.loading(),
                "threads": self.engine.threads, "max_batch": self.engine.max_batch,
                "memory_mb": psutil.Process().memory_info().rss / 2**20,
                "kv_cache_mb": self.engine.kv_bytes / 2**20,
                "ttft": last.ttft if last else None,
                "tokens_per_s": last.tokens_per_s if last else None}

    def loading(self) -> Snapshot | None:
        """How far the model's loading is; None once it is ready (or for a remote engine)."""
        if self.engine.ready:
            return None
        return self.engine.progress.snapshot()

    def export(self, owner: str, conversation_id: str, kind: str) -> tuple[str, str]:
        """(file name, text) of a conversation as Markdown ("md") or JSON ("json")."""
        conversation = self.store.get_conversation(owner, conversation_id)
        messages = [m for m in self.store.messages(owner, conversation_id)
                    if m.role != "assistant" or m.content or m.status == COMPLETE]
        render = transfer.to_markdown if kind == "md" else transfer.to_json
        return transfer.file_name(conversation, f".{kind}"), render(conversation, messages)

    def import_export(self, owner: str, raw: bytes) -> Conversation:
        """A JSON export (`raw` bytes) as a new conversation of `owner`; ImportRefused if not."""
        title, messages = transfer.parse_export(raw)
        title = title_from(title) or title_from(next(
            (m["content"] for m in messages if m["role"] == "user"), "")) or "…"
        return self.store.import_conversation(owner, title, messages)

    # Replies --------------------------------------------------------------------------------
    def send(self, owner: str, conversation_id: str | None, text: str, *,
             session: str | None = None) -> Iterator[ReplyUpdate]:
        """Store the user's message (a new conversation if none is given), then stream a reply.

        A message with nothing but white space is ignored: nothing is stored or yielded.
        `session` names the caller (a browser tab) so that `stop(session)` can end this reply.
        """
        if not text or not text.strip():
            return
        self.check_length(text)
        if conversation_id:
            conversation = self.store.get_conversation(owner, conversation_id)
        else:
            conversation = self.store.create_conversation(owner, title_from(text))
            if session is not None:  # what was typed in the new chat was prefilled under this
                self.engine.adopt(draft_key(session), conversation.id)
        self.store.add_message(conversation.id, "user", text)
        yield from self._reply(owner, conversation, session)

    def draft(self, owner: str, conversation_id: str | None, text: str, *,
              session: str) -> threading.Event | None:
        """The user is typing `text` (not sent yet): have the engine prefill the prompt it would
        make, while idle, so that Send only prefills what changed since. `session` names the
        tab, whose new chat has no conversation yet. Returns the engine's event (set once
        prefilled, replaced or skipped), or None when there is nothing to prefill."""
        if not text.strip() or not self.engine.ready:
            return None
        if len(text) > CHARS_PER_TOKEN_LIMIT * self.input_budget():
            return None
        try:
            stored = self.store.messages(owner, conversation_id) if conversation_id else []
        except NotFound:  # deleted in another tab: Send will say so
            return None
        draft = Message(0, conversation_id or "", "user", text, time.time())
        try:  # the prompt _reply will build once the message is stored
            prompt, _, _ = self._prompt(owner, conversation_id or "", [*stored, draft])
        except MessageTooLong:
            return None
        return self.engine.prepare(prompt, conversation_id or draft_key(session))

    def retry(self, owner: str, conversation_id: str, *,
              session: str | None = None) -> Iterator[ReplyUpdate]:
        """Replace the last reply with a new one (or answer a last user message left unanswered)."""
        conversation = self.store.get_conversation(owner, conversation_id)
        history = self.store.messages(owner, conversation_id)
        if history and history[-1].role == "assistant":
            self.store.delete_message(history[-1].id)
            history = history[:-1]
        if not history or history[-1].role != "user":
            return
        yield from self._reply(owner, conversation, session)

    def input_budget(self) -> int:
        """Prompt tokens allowed: max_input_tokens, within the model's context minus the reply."""
        config = self.settings.current()
        if not self.engine.ready:  # the model's context is not known yet
            return config.max_input_tokens
        room = self.engine.context_length - config.max_new_tokens
        return max(64, min(config.max_input_tokens, room))

    def check_length(self, text: str) -> None:
        """Refuse (MessageTooLong, nothing stored) a message that cannot fit in the prompt."""
        config, budget = self.settings.current(), self.input_budget()
        if len(text) > CHARS_PER_TOKEN_LIMIT * budget:
            raise MessageTooLong(
                f"This message is too long ({len(text):,} characters): the model reads at most "
                f"{budget:,} tokens. Shorten it or split it (max_input_tokens in config.yaml).")
        if not self.engine.ready:
            return  # counted when the model is ready (ChatService.fit), before the reply starts
        system = [{"role": "system", "content": config.system_prompt}] if config.system_prompt.strip() else []
        needed = self.engine.count_tokens([*system, {"role": "user", "content": text}])
        if needed > budget:
            raise MessageTooLong(
                f"This message is too long ({needed:,} tokens with the system prompt): the model "
                f"reads at most {budget:,}. Shorten it or split it (max_input_tokens in config.yaml).")

    def fit(self, messages: list[dict], already_dropped: int = 0) -> tuple[list[dict], int]:
        """Leave out the oldest history so that the prompt fits input_budget(); the system
        prompt and the last message always stay. Returns (prompt, messages left out).

        `already_dropped` (the previous reply's count) is kept while the prompt still fits, so
        the prompt's start is stable and the KV cache stays useful; when more must go, history
        is cut to REFILL of the budget, at a user message."""
        budget = self.input_budget()
        system = messages[:1] if messages and messages[0]["role"] == "system" else []
        history = messages[len(system):]
        sizes: dict[int, int] = {}  # prompt tokens when the k oldest messages are left out

        def size(k: int) -> int:
            if k not in sizes:
                sizes[k] = self.engine.count_tokens([*system, *history[k:]])
            return sizes[k]

        dropped = max(0, min(already_dropped, len(history) - 1))
        if size(dropped) <= budget:
            return [*system, *history[dropped:]], dropped
        while dropped < len(history) - 1 and size(dropped) > REFILL * budget:
            dropped += 1
            while dropped < len(history) - 1 and history[dropped]["role"] != "user":
                dropped += 1
        if size(dropped) > budget:
            raise MessageTooLong(f"The last message alone is longer than the {budget:,} tokens "
                                 "the model reads (max_input_tokens in config.yaml).")
        return [*system, *history[dropped:]], dropped

    def prompt_messages(self, owner: str, conversation_id: str,
                        stored: list[Message] | None = None) -> list[dict]:
        """What the model sees: the system prompt, then the history (or only the last message).
        `stored`: the conversation's messages when the caller has read them already."""
        config = self.settings.current()
        if stored is None:
            stored = self.store.messages(owner, conversation_id)
        stored = [m for m in stored
                  if m.role == "user" or (m.status in _HISTORY_STATUSES and m.content)]
        if not config.enable_history:
            stored = [m for m in stored if m.role == "user"][-1:]
        messages = [{"role": m.role, "content": m.content} for m in stored]
        for message, m in zip(messages, stored):
            if m.role == "assistant" and m.token_ids:
                message["token_ids"] = m.token_ids  # the model's own ids for its own words
        if config.system_prompt.strip():
            messages.insert(0, {"role": "system", "content": config.system_prompt})
        return messages

    def _prompt(self, owner: str, conversation_id: str,
                stored: list[Message]) -> tuple[list[dict], int, int]:
        """What the model reads to answer the last of `stored` (a conversation's messages),
        cut to fit: (prompt, messages left out, how many the previous reply left out)."""
        earlier = [m.dropped for m in stored if m.role == "assistant" and m.dropped is not None]
        previous = earlier[-1] if earlier else 0
        prompt, dropped = self.fit(self.prompt_messages(owner, conversation_id, stored), previous)
        return prompt, dropped, previous

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

    def _wait_for_model(self, conversation: Conversation) -> Iterator[ReplyUpdate]:
        """While the model loads, say how far it is (and notice a closed consumer)."""
        while not self.engine.ready:
            snapshot = self.engine.progress.snapshot()
            if snapshot.phase == "failed":
                return
            yield ReplyUpdate(conversation, 0, "", STREAMING, loading=snapshot)
            self.engine.wait_ready(HEARTBEAT_INTERVAL)

    def _reply(self, owner: str, conversation: Conversation,
               session: str | None) -> Iterator[ReplyUpdate]:
        if not self.engine.ready:
            try:
                yield from self._wait_for_model(conversation)
            except ModelNotLoaded:
                pass
            if not self.engine.ready:  # loading failed: the reply is that error, saved as such
                error = self.engine.progress.snapshot().error or "the model could not be loaded"
                reply = self.store.add_message(conversation.id, "assistant", "", status=ERROR)
                self.store.update_message(reply.id, status=ERROR, error=error)
                yield ReplyUpdate(conversation, reply.id, "", ERROR, error=error)
                return
        config = self.settings.current()
        sampling = Sampling(temperature=config.temperature, top_p=config.top_p,
                            max_new_tokens=config.max_new_tokens,
                            repetition_penalty=config.repetition_penalty)
        prompt, dropped, previous = self._prompt(owner, conversation.id,
                                                 self.store.messages(owner, conversation.id))
        notice = (i18n.text("en", "dropped", budget=self.input_budget())
                  if dropped and not previous else None)
        reply = self.store.add_message(conversation.id, "assistant", "", status=STREAMING)
        parts: list[str] = []
        status, error, stats, generation = STREAMING, None, Stats(), None
        try:
            generation = self.engine.generate(prompt, sampling, cache_key=conversation.id)
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
                        self.store.update_message(reply.id, content="".join(parts))
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
            if status == STREAMING:  # an unexpected exception is on its way up
                status, error = ERROR, "unexpected error, see the terminal"
            token_ids = generation.token_ids if generation is not None else None
            self.store.update_message(
                reply.id, content="".join(parts), status=status, error=error,
                prompt_tokens=stats.prompt_tokens, cached_tokens=stats.cached_tokens,
                new_tokens=stats.new_tokens,
                ttft=stats.ttft, tokens_per_s=stats.tokens_per_s, dropped=dropped,
                tokens=json.dumps(token_ids) if token_ids else None)
            if self._warmed is not None:  # warming is on: re-warm a hot-reloaded system prompt
                self.warm()
        yield ReplyUpdate(conversation, reply.id, "".join(parts), status, stats, error, notice)
