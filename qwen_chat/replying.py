"""A reply streamed and saved: the chat service's part that runs the engine for one message.

The reply is committed while it streams (at least once a second), and once more when it ends,
however it ends: complete, stopped (the consumer closed the generator: Stop, a closed tab) or
error. A kill at any moment loses at most the last second. The consumer gets the first words at
once, then at most one update per UPDATE_INTERVAL, and a heartbeat while nothing new comes.

`Replying` is mixed into chat.ChatService and uses its `store`, `engine`, `_active`,
`_active_lock`, `_warmed`, `last_stats`, `warm`, `_prompt`, `input_budget`, `history_busy` and
`measured_prefill`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Iterator

from . import i18n
from .attachments import sources_line
from .config import Config
from .engine.contract import ChatEngine, Sampling, Stats
from .engine.startup import Snapshot
from .errors import GenerationError, ModelNotLoaded, StorageFull
from .store import COMPLETE, ERROR, STOPPED, STREAMING, Conversation

log = logging.getLogger(__name__)

SAVE_INTERVAL = 1.0  # seconds between commits of a streaming reply
# While nothing new arrives (prefill, waiting for the engine), the consumer still gets an update
# this often, so that a closed consumer (Stop, a closed tab) is noticed.
HEARTBEAT_INTERVAL = 0.25
# Streamed text reaches the page and API clients at most this often (a token every 20-80 ms
# would cost a page update each): 25 updates a second look continuous.
UPDATE_INTERVAL = 0.04


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


class Replying:
    """send()'s second half: stream the reply to a stored message, saving it as it grows."""

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
