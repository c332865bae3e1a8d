"""Per-conversation KV caches kept between turns, bounded by a memory budget (LRU).

A chat re-sends its whole history every turn; without this, every turn re-pays the prefill of
all earlier turns. With it, a turn only prefills what is new since the cached tokens.

Correctness rests on one rule: the cache is reused only up to the longest common prefix of
*token ids* (never text: re-tokenizing a reply can differ from the tokens that were generated),
so any change earlier in the prompt (an edited system prompt, history switched off, a retried
or stopped reply) simply cuts the reuse shorter.

A message being typed may be prefilled ahead (Engine.prepare) by the same rule: a draft extends
the conversation's cache from its common prefix, and a reply then reuses what it shares with it.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class _Entry:
    tokens: torch.Tensor  # 1-D ids whose keys and values the cache holds, in order
    cache: object  # a transformers DynamicCache
    nbytes: int


def cache_bytes(cache) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.nelement() * tensor.element_size()
    return total


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    same = a[:n] == b[:n]
    return n if bool(same.all()) else int(torch.argmin(same.to(torch.int8)))


class KVCacheStore:
    """Caches keyed by conversation. `take` hands a cache out (cropped to what the new prompt
    shares with it); `put` gives it back after the turn. A cache being used is not in the store,
    so two generations never share one."""

    def __init__(self, budget_mb: int):
        self.budget = budget_mb * 1024 * 1024
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._shared: _Entry | None = None  # e.g. the system prompt: the start of every new chat
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def closest(self, prefix: str, input_ids: torch.Tensor) -> tuple[str | None, bool]:
        """Of the keys starting with `prefix`, the one whose cache shares the longest prefix
        with `input_ids` (more than the shared cache, the system prompt, does), and whether
        `input_ids` continue all of it (the same conversation's next turn) or branch off it."""
        with self._lock:
            best = 0 if self._shared is None else common_prefix(self._shared.tokens, input_ids)
            found, whole = None, False
            for key, entry in self._entries.items():
                if key.startswith(prefix):
                    n = common_prefix(entry.tokens, input_ids)
                    if n > best:
                        found, best, whole = key, n, n == len(entry.tokens)
        return found, whole

    def fork(self, key: str, new: str) -> None:
        """A copy of `key`'s cache under `new` (a conversation that branches off another: the
        other keeps its own), within the budget."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None:
            self.put(new, entry.tokens, copy.deepcopy(entry.cache))

    def take(self, key: str, input_ids: torch.Tensor) -> tuple[object | None, int]:
        """Return (cache cropped to the reusable prefix, its length) or (None, 0)."""
        with self._lock:
            entry, shared = self._entries.pop(key, None), self._shared
        # At least one prompt token must remain to be processed: it yields the first logits.
        keep = 0 if entry is None else min(common_prefix(entry.tokens, input_ids), len(input_ids) - 1)
        if keep <= 0 and shared is not None:  # a new conversation: start from the shared prefix
            keep = min(common_prefix(shared.tokens, input_ids), len(input_ids) - 1)
            entry = _Entry(shared.tokens, copy.deepcopy(shared.cache), shared.nbytes) if keep > 0 else None
        if entry is None or keep <= 0:
            return None, 0
        length = entry.cache.get_seq_length()
        if length > keep:
            entry.cache.crop(keep - length)  # transformers 5: a negative count of tokens to drop
        return entry.cache, keep

    def put(self, key: str, sequence: torch.Tensor, cache) -> None:
        """Keep `cache` (holding the first get_seq_length() tokens of `sequence`) for `key`."""
        if self.budget <= 0 or cache is None:
            return
        length = cache.get_seq_length()
        entry = _Entry(sequence[:length].clone(), cache, cache_bytes(cache))
        if entry.nbytes > self.budget:
            return
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = entry
            total = sum(e.nbytes for e in self._entries.values())
            while total > self.budget:  # evict the least recently used conversations
                _, evicted = self._entries.popitem(last=False)
                total -= evicted.nbytes

    def share(self, tokens: torch.Tensor, cache) -> None:
        """Keep `cache` (of `tokens`) as the starting point of conversations with no cache of
        their own; it is copied on use and never evicted. Not counted in the budget (small)."""
        with self._lock:
            self._shared = _Entry(tokens.clone(), cache, cache_bytes(cache))

    def rename(self, old: str, new: str) -> None:
        """File `old`'s cache under `new` (a draft typed in a new chat becomes its
        conversation's), unless `new` has one already."""
        with self._lock:
            entry = self._entries.pop(old, None)
            if entry is not None and new not in self._entries:
                self._entries[new] = entry

    def forget(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._shared = None
