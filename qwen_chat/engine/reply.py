"""What every engine hands a front end: a streaming `Reply` with its `Stats`, and the `Sampling`
settings it was asked for. The local engine (engine.py) and the remote one (remote.py) both
produce Replies; the chat service and the /v1 API only consume them."""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import GenerationError

# How often an idle stream wakes up so its consumer can react to a cancel (seconds).
POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.8
    max_new_tokens: int = 512
    repetition_penalty: float = 1.0
    # OpenAI's: subtracted from the logit of every token already in the reply, once (presence)
    # and per time it occurs (frequency); 0 = off.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None  # the same seed and settings give the same reply (None: random)
    # A grammar the reply must follow (grammar.py: JSON, a tool call), None: free text.
    grammar: str | None = None
    # Log-probabilities to report with each token: None, or how many alternatives (0-20).
    logprobs: int | None = None


def json_spec(schema: dict | None) -> str:
    """A Sampling.grammar for one JSON value of `schema` (None: any JSON object)."""
    return json.dumps({"json_schema": schema}, ensure_ascii=False, sort_keys=True)


def tools_spec(tools: list[dict], *, parallel: bool = True) -> str:
    """A Sampling.grammar for tool calls of `tools` ({"name", "parameters"})."""
    return json.dumps({"tools": tools, "parallel": parallel}, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token with its log-probability and the most likely alternatives there."""
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Stats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys/values were reused from the last turn
    new_tokens: int = 0
    ttft: float | None = None  # seconds from the request to the first new token
    tokens_per_s: float | None = None  # decode speed after the first token


def flatten_content(content: Any) -> str:
    """Gradio 6 hands message content as a list of blocks; chat templates expect a string."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, (list, tuple)):
        return "".join(flatten_content(part) for part in content)
    return "" if content is None else str(content)


def stop_replies(replies: list["Reply"], timeout: float) -> None:
    """Cancel all of `replies` at once, then wait for each within one shared deadline."""
    for reply in replies:
        reply.cancel.set()
    deadline = time.monotonic() + timeout
    for reply in replies:
        reply.close(max(0.0, deadline - time.monotonic()))


class Reply:
    """A reply being produced somewhere (this engine, or a remote server). Iterate for text
    pieces ("" while waiting); `cancel` or close() ends it; `stats` fill in as it streams."""

    finish_reason = "stop"  # or "length": cut at max_new_tokens
    token_ids: list[int] | None = None  # the reply's tokens as generated, when they are known
    logprobs: list[TokenLogprob] | None = None  # per token, when Sampling.logprobs asked for them

    def __init__(self, prompt_tokens: int):
        self.cancel = threading.Event()
        self.stats = Stats(prompt_tokens=prompt_tokens)
        self._pieces: queue.Queue[str | None] = queue.Queue()
        self._done = threading.Event()
        self._error: BaseException | None = None

    def _end(self, error: BaseException | None = None, *, signal: bool = True) -> None:
        """The reply is over; `signal`: also end the stream of pieces (None)."""
        self._error = error
        self._done.set()
        if signal:
            self._pieces.put(None)

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                text = self._pieces.get(timeout=POLL_INTERVAL)
            except queue.Empty:
                yield ""  # heartbeat: still prefilling or waiting for the engine
                continue
            if text is None:
                break
            yield text
        self._raise_failure()

    def batches(self, interval: float) -> Iterator[str]:
        """The text joined into at most one piece per `interval` seconds, the first at once
        ("" while nothing comes, as __iter__). For a front end that pays per piece (a thread
        hop, an event on the wire, the client's parsing), on a machine whose cores the model
        needs: the same text in fewer, larger pieces."""
        parts: list[str] = []
        last = float("-inf")
        while True:
            wait = POLL_INTERVAL if not parts else max(0.0, last + interval - time.monotonic())
            try:
                text = self._pieces.get(timeout=wait)
            except queue.Empty:
                text = ""
            if text is None:
                break
            if text:
                parts.append(text)
            now = time.monotonic()
            if parts and now >= last + interval:
                yield "".join(parts)
                parts, last = [], now
            elif not parts:
                yield ""  # heartbeat
        if parts:
            yield "".join(parts)
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise GenerationError(f"Generation failed: {type(self._error).__name__}: "
                                  f"{self._error}") from self._error

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def close(self, timeout: float = 10.0) -> None:
        """Stop generating and wait (bounded) until the reply has been let go."""
        self.cancel.set()
        self._done.wait(timeout)
