"""The engine contract: what the chat service, the page and /v1 may ask of an engine.

Three engines implement it: `local.Engine` (the model on this CPU), `startup.LoadingEngine` (the
local engine's stand-in while the model loads, then a pass-through) and `remote.RemoteEngine`
(another OpenAI-compatible server). Front ends are typed on `ChatEngine` only, never on one of
them, and this module imports no torch: a front end that needs only the contract stays light.

Messages are chat messages as the page and /v1 carry them ({"role", "content"}; an assistant
message may carry "token_ids", the reply's tokens as generated, to be reused verbatim).
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

from .reply import (Reply, Sampling, Stats, TokenLogprob, json_spec,  # noqa: F401 - the contract
                    tools_spec)


@runtime_checkable
class ChatEngine(Protocol):
    name: str  # the model, as shown to users and to /v1 clients
    max_batch: int  # replies generated together; the page's and /v1's concurrency follow it
    # Serves Sampling.grammar and .logprobs and `tools` (the local engine; not a remote one).
    constrained: bool

    @property
    def ready(self) -> bool:
        """True once replies can be generated (the model is loaded)."""

    @property
    def progress(self):
        """How far loading is (startup.LoadProgress), or None for an engine that never loads."""

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until ready or `timeout` seconds; True if ready. Raises errors.ModelNotLoaded
        once loading has failed (its message says why, in words a user can act on)."""

    @property
    def precision(self) -> str:
        """The kernel path replies run on ("int8", "bf16", ..., "remote"); "…" while loading."""

    @property
    def threads(self) -> int:
        """CPU threads the model computes with right now (0 where not known: remote)."""

    @property
    def context_length(self) -> int:
        """The most tokens (prompt and reply) one conversation may hold."""

    @property
    def waiting(self) -> int:
        """Replies queued for room in the batch."""

    @property
    def kv_bytes(self) -> int:
        """Memory held by cached conversations' keys and values."""

    def count_tokens(self, messages: list[dict], tools: list[dict] | None = None) -> int:
        """Prompt tokens of `messages` (and `tools`) once chat-templated."""

    def generate(self, messages: list[dict], sampling: Sampling, *,
                 cache_key: str | None = None, cache_family: str | None = None,
                 tools: list[dict] | None = None) -> Reply:
        """Queue a reply to `messages`; iterate it for text pieces. With a `cache_key` (a
        conversation id) the key's cached prefix is reused and this turn kept for the next.
        With a `cache_family` instead (stateless clients, e.g. /v1), the family's cache that
        shares the longest prefix with the prompt is reused (or a new one is started).
        `tools` (OpenAI's function definitions) are shown to the model by its chat template."""

    def token_bytes(self, ids: list[int]) -> list[bytes]:
        """Each token's own bytes (for log-probabilities; engines that are `constrained`)."""

    def warm(self, messages: list[dict]) -> int:
        """Prefill what every new conversation starts with; returns the tokens cached."""

    def prepare(self, messages: list[dict], cache_key: str) -> threading.Event:
        """Prefill a message being typed while idle; the event is set once done or dropped."""

    def adopt(self, draft_key: str, cache_key: str) -> None:
        """A draft typed under `draft_key` was sent as conversation `cache_key`."""

    def forget(self, cache_key: str) -> None:
        """Drop a conversation's cache (it was deleted)."""

    def stop_all(self, timeout: float = 5.0) -> None:
        """The app is closing: end every reply (stored as stopped) within `timeout`."""
