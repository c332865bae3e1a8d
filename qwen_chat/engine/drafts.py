"""Messages being typed, prefilled while no reply needs the CPU: the Engine's part that does it.

The page sends each keystroke's draft (only the latest of a conversation is kept); the
scheduler (scheduler.py) prefills it between replies, DRAFT_CHUNK tokens a pass, into that
conversation's KV cache, so that Send only prefills what was typed since and the assistant's
header: a first token in about one decode step, at any turn. A reply that arrives goes first:
a draft delays it by at most one pass.

`DraftPrefill` is mixed into `local.Engine` and uses its scheduler state: `_wake` (the
condition guarding the queues), `_drafts`, `_waiting`, `_jobs`, `_replies`, `_closing`, `kv`,
`lock` and `_forward`.
"""

from __future__ import annotations

import threading

import torch
from transformers import DynamicCache

# A draft is prefilled this many tokens at a time; between two passes a reply that arrived goes
# first, so a draft delays a reply by at most one pass (about 0.1 s on 2 cores).
DRAFT_CHUNK = 32
# Passes that only fill the cache (warm, drafts, the next turn's start) compute no logits: the
# vocabulary-wide product of even one row is about 3.5 ms of a 3-token pass's 26 (measured).
NO_LOGITS = torch.empty(0, dtype=torch.long)


class DraftPrefill:
    """prepare / adopt (the engine contract's draft calls) and the scheduler's draft pass."""

    def prepare(self, messages: list[dict], cache_key: str) -> threading.Event:
        """Prefill `messages` (their last one is being typed) into `cache_key`'s KV cache while
        the engine is idle, so that the reply to them, once sent, starts from the cache. Only the
        latest draft of a key is kept. A draft that comes while a reply of the same key is
        queued or running is dropped: it was typed before that reply, which it lacks (a late
        keystroke of the message being answered). Returns an event set once the draft has been
        prefilled, replaced by a newer one, or dropped."""
        done = threading.Event()
        if self.kv.budget <= 0:
            done.set()
            return done
        ids = self.prompt_ids(messages)[0]
        with self._wake:
            if self._closing or any(g.cache_key == cache_key and g.running for g in self._replies):
                done.set()
                return done
            self._drop_draft(cache_key)
            self._drafts[cache_key] = (ids, done)
            self._run_scheduler()
        return done

    def adopt(self, draft_key: str, cache_key: str) -> None:
        """A message typed under `draft_key` (a new chat) was sent as conversation `cache_key`:
        its prefilled cache becomes that conversation's, before the reply is admitted."""
        with self._wake:
            self._drop_draft(draft_key)
            self._jobs.append(lambda: self.kv.rename(draft_key, cache_key))
            self._run_scheduler()

    def _drop_draft(self, key: str | None) -> None:
        """Forget `key`'s pending draft (call with self._wake held)."""
        ids_done = self._drafts.pop(key, None) if key else None
        if ids_done is not None:
            ids_done[1].set()

    def _next_draft(self) -> tuple[str, torch.Tensor, threading.Event] | None:
        """The oldest pending draft, taken off the list (call with self._wake held)."""
        if not self._drafts:
            return None
        key = next(iter(self._drafts))
        return (key, *self._drafts.pop(key))

    def _draft(self, key: str, ids: torch.Tensor, done: threading.Event) -> None:
        """Prefill a draft's uncached tokens into `key`'s cache, DRAFT_CHUNK at a time; stop
        early (keeping what is done) when a reply or a newer draft of `key` arrives."""
        try:
            cache, done_upto = self.kv.take(key, ids)
            cache = cache if cache is not None else DynamicCache(config=self.model.config)
            try:
                while done_upto < len(ids):
                    with self._wake:
                        if self._waiting or self._jobs or key in self._drafts or self._closing:
                            break
                    chunk = ids[done_upto:done_upto + DRAFT_CHUNK]
                    with self.lock, torch.inference_mode():
                        self._forward(cache, input_ids=chunk[None], logits_to_keep=NO_LOGITS)
                    done_upto += len(chunk)
            finally:
                if cache.get_seq_length() == done_upto:  # else a pass failed half-way: drop it
                    self.kv.put(key, ids, cache)
        except Exception:  # noqa: BLE001 - only a head start lost: the reply prefills it all
            pass
        finally:
            done.set()
