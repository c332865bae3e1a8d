"""The scheduler: the Engine's part that runs on its one thread and does all model work.

One `step` is three parts, each testable alone with a tiny model (tests/test_scheduler.py):
schedule (admit waiting replies as room allows, waiting while there is no work; prefill them;
end finished ones and keep their caches for the next turn), run the model (one decode pass over
every running reply), hand out (sample each reply's next token and stream it).

`Scheduler` is mixed into `local.Engine` and uses its state: `_wake` (the condition guarding the
queues), `_waiting`, `_jobs`, `_drafts`, `_running`, `_batch`, `_closing`, `_resting`, `kv`,
`lock`, `governor`, `prompts`, `turn_gap`, `top_k`, `eos_token_ids`, `step_sizes` and `_forward`;
drafts are prefilled by its DraftPrefill part (drafts.py).

Everything here runs on the scheduler's one thread, all model work included (warm too). Each
thread that runs torch work keeps an OpenMP thread pool while it lives, and with more pooled
threads than cores libgomp stops spinning between parallel regions, which makes every decode
step about a third slower (measured: 25 vs 38-46 ms per token when another thread's pool was
alive). So no other thread of the app computes: app.py loads the model in a thread that ends,
and its main thread only serves. (A thread that ended whenever idle made the process abort at
exit 1 time in 6: it stays.)
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from . import memory
from .batching import Batch
from .drafts import NO_LOGITS
from .generation import Generation


class Scheduler:
    """The scheduler loop of local.Engine (see the module docstring)."""

    def _schedule(self) -> None:
        while True:
            self.step()

    def step(self) -> list[Generation]:
        """One turn of the scheduler, in three parts: schedule (admit waiting replies, waiting
        while there is no work, prefill them; end finished ones; batch the rest), run the model
        (one decode pass over the batch), hand out (sample each reply's next token and stream
        it). Returns the replies that got a token from the decode pass."""
        try:
            running = self._schedule_step(self._admit(len(self._running)))
            if not running:
                return []
            logits = self._decode(running)
            self._hand_out(running, logits)
            return running
        except BaseException as exc:  # noqa: BLE001 - handed to every reply in the step
            for g in self._running:
                g.cache = None
                g.finish(exc)
            self._running, self._batch = [], None
            return []

    def _schedule_step(self, admitted: list[Generation]) -> list[Generation]:
        """Prefill the admitted replies (each gets its first token), end the finished ones and
        keep their caches; returns the replies this step decodes."""
        self._running += [g for g in admitted if self._prefill(g)]
        ended = [g for g in self._running if g.cancel.is_set() or self._over(g)]
        if self._batch is not None and (ended or self._batch.members != self._running):
            self._batch.split(self.model.config)  # the batch changes: rebuilt in _decode
            self._batch = None
        for g in ended:
            self._running.remove(g)
            self._end(g)
        return self._running

    def _decode(self, running: list[Generation]) -> torch.Tensor:
        """One forward pass over every running reply's last token: their next-token logits."""
        self.step_sizes[len(running)] += 1
        if len(running) == 1:
            return self._step_one(running[0])
        self._batch = self._batch or Batch(running, self.model.config)
        return self._step_batch(self._batch)

    def _hand_out(self, running: list[Generation], logits: torch.Tensor) -> None:
        for g, row in zip(running, logits):
            g.add_token(g.choose(row, self.top_k))

    def _admit(self, busy: int) -> list[Generation]:
        """Replies to start now, first come first served, as room allows; waits while idle.
        Other jobs (warm) run here first, then drafts while no reply needs the CPU. A reply
        stopped while it waited ends here, never started."""
        while True:
            with self._wake:
                if not self._jobs and not self._waiting and not busy and not self._drafts:
                    memory.trim()  # idle: return freed memory to the system
                while not self._jobs and not self._waiting and not busy and not self._drafts:
                    self._resting.set()
                    self._wake.wait(None if self._closing else self.governor.idle_wait)
                    if not self._closing:
                        self.governor.sample()  # keeps the load measured while idle
                self._resting.clear()
                jobs = list(self._jobs)
                self._jobs.clear()
                draft = None if jobs or self._waiting or busy else self._next_draft()
            for job in jobs:
                job()
            if draft is not None:
                self._draft(*draft)
            elif not jobs:
                break
        with self._wake:
            for g in [g for g in self._waiting if g.cancel.is_set()]:
                self._waiting.remove(g)
                g.finish()
            admitted = []
            while self._waiting and busy + len(admitted) < self.max_batch:
                admitted.append(self._waiting.popleft())
            return admitted

    def _over(self, g: Generation) -> bool:
        return bool(g.tokens) and (g.tokens[-1] in self.eos_token_ids
                                   or len(g.tokens) >= g.sampling.max_new_tokens)

    def _end(self, g: Generation) -> None:
        """Keep the reply's cache for its conversation's next turn, extended by the template's
        tokens that start that turn, then release the reply. The next turn then prefills only
        the user's words, as a first turn does after warm(). The text is all shown first; the
        extension (a few tokens, tens of ms) only delays the end of the reply's stream."""
        cache, g.cache = g.cache, None
        if g.cache_key and cache is not None and self.kv.budget > 0:
            g.streamer.flush()  # all the text is shown before the cache is extended
            self._keep(g, cache)
        g.finish()

    def _keep(self, g: Generation, cache: DynamicCache) -> None:
        cached = g.length  # the prompt and all the reply but its last token
        sequence = torch.cat([g.input_ids, torch.tensor(g.token_ids + self.turn_gap, dtype=torch.long)])
        try:
            if self.turn_gap and len(sequence) > cached:
                with self.lock, torch.inference_mode():
                    self._forward(cache, input_ids=sequence[cached:][None], logits_to_keep=NO_LOGITS)
        except Exception:  # noqa: BLE001 - only a head start lost: keep the reply's own cache
            sequence = torch.cat([g.input_ids, torch.tensor(g.tokens, dtype=torch.long)])
            if cache.get_seq_length() != cached:
                return  # the failed pass left the cache half-extended: drop it
        self.kv.put(g.cache_key, sequence, cache)

    def _prefill(self, g: Generation) -> bool:
        """Process the prompt (only its uncached tail) and sample the first token."""
        try:
            cache, g.stats.cached_tokens = (
                self.kv.take(g.cache_key, g.input_ids) if g.cache_key else (None, 0))
            g.cache = cache if cache is not None else DynamicCache(config=self.model.config)
            tail = g.input_ids[g.stats.cached_tokens:][None]
            with self.lock, torch.inference_mode():
                out = self._forward(g.cache, input_ids=tail, logits_to_keep=1)
            g.add_token(g.choose(out.logits[0, -1], self.top_k))
            return True
        except BaseException as exc:  # noqa: BLE001 - reaches the reply's consumer
            g.cache = None
            g.finish(exc)
            return False

    def _step_one(self, g: Generation) -> torch.Tensor:
        with self.lock, torch.inference_mode():
            out = self._forward(g.cache, input_ids=torch.tensor([[g.tokens[-1]]]))
        return out.logits[:, -1]

    def _step_batch(self, batch: Batch) -> torch.Tensor:
        members = batch.members
        ids = torch.tensor([[g.tokens[-1]] for g in members])
        positions = torch.tensor([[g.length] for g in members])  # of the token fed
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(members), 1)], dim=1)
        with self.lock, torch.inference_mode():
            out = self._forward(batch.cache, input_ids=ids, attention_mask=batch.mask,
                                position_ids=positions)
        return out.logits[:, -1]
