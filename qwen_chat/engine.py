"""Streaming generation on CPU: `model.generate` in a worker thread feeding a TextIteratorStreamer.

The engine knows nothing about conversations or storage: it turns a list of chat messages into a
stream of text pieces. Each `Generation` owns a cancel event checked between decode steps, so
closing it (Stop, a closed tab) ends the worker thread itself, not only the display.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from .errors import GenerationError
from .kvcache import KVCacheStore

# How often an idle stream wakes up so its consumer can react to a cancel (seconds).
POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.8
    max_new_tokens: int = 512
    repetition_penalty: float = 1.0


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


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


class _TimedStreamer(TextIteratorStreamer):
    """Counts new tokens and times the first and last one as generate() hands them over."""

    def __init__(self, tokenizer, stats: Stats, started: float, **kwargs):
        super().__init__(tokenizer, **kwargs)
        self.stats, self.started = stats, started
        self.first_at = self.last_at = None

    def put(self, value):
        if not self.next_tokens_are_prompt:
            now = time.perf_counter()
            if self.first_at is None:
                self.first_at = now
                self.stats.ttft = now - self.started
            self.last_at = now
            self.stats.new_tokens += int(value.numel())
            if self.stats.new_tokens > 1 and self.last_at > self.first_at:
                self.stats.tokens_per_s = (self.stats.new_tokens - 1) / (self.last_at - self.first_at)
        super().put(value)


class Generation:
    """One reply being generated. Iterate for text pieces ("" while waiting); close() cancels."""

    def __init__(self, engine: "Engine", input_ids: torch.Tensor, sampling: Sampling,
                 cache_key: str | None = None):
        self.cancel = threading.Event()
        self.stats = Stats(prompt_tokens=int(input_ids.shape[-1]))
        self._error: BaseException | None = None
        self._streamer = _TimedStreamer(
            engine.tokenizer, self.stats, time.perf_counter(),
            skip_prompt=True, skip_special_tokens=True, timeout=POLL_INTERVAL)
        kwargs = engine.generate_kwargs(input_ids, sampling)
        kwargs.update(streamer=self._streamer, return_dict_in_generate=True,
                      stopping_criteria=StoppingCriteriaList([_Cancelled(self.cancel)]))
        self._thread = threading.Thread(
            target=self._run, args=(engine, kwargs, cache_key), name="qwen-chat-generate",
            daemon=True)
        self._thread.start()

    def _run(self, engine: "Engine", kwargs: dict, cache_key: str | None) -> None:
        try:
            # Wait for the engine, but give up at once when cancelled while waiting.
            while not engine.lock.acquire(timeout=POLL_INTERVAL):
                if self.cancel.is_set():
                    return
            try:
                if not self.cancel.is_set():
                    self._generate(engine, kwargs, cache_key)
            finally:
                engine.lock.release()
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised in the consumer
            self._error = exc
        finally:
            self._streamer.end()  # unblocks the consumer in every case

    def _generate(self, engine: "Engine", kwargs: dict, cache_key: str | None) -> None:
        """Run generate, reusing and then keeping the conversation's KV cache."""
        input_ids = kwargs["input_ids"]
        cache, self.stats.cached_tokens = (
            engine.kv.take(cache_key, input_ids[0]) if cache_key else (None, 0))
        if cache is not None:
            kwargs["past_key_values"] = cache  # generate() prefills only the uncached tail
        with torch.inference_mode():
            out = engine.model.generate(**kwargs)
        if cache_key:  # kept only after a generation that ended without an exception
            engine.kv.put(cache_key, out.sequences[0], out.past_key_values)

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                text = next(self._streamer)
            except queue.Empty:
                yield ""  # heartbeat: still prefilling or waiting for the engine lock
                continue
            except StopIteration:
                break
            if text:
                yield text
        self._thread.join()
        if self._error is not None:
            raise GenerationError(f"Generation failed: {type(self._error).__name__}: "
                                  f"{self._error}") from self._error

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 10.0) -> None:
        """Stop generating and wait (bounded) for the worker thread to finish its current step."""
        self.cancel.set()
        self._thread.join(timeout)


class Engine:
    """A loaded causal LM and its tokenizer, serving one generation at a time."""

    def __init__(self, model, tokenizer, *, name: str = "", kv_cache_mb: int = 256):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.lock = threading.Lock()  # one generate at a time: two would halve each other's speed
        self.kv = KVCacheStore(kv_cache_mb)
        self.eos_token_ids = self._eos_ids()
        self.pad_token_id = tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_ids[0] if self.eos_token_ids else 0

    @property
    def context_length(self) -> int:
        """The most tokens (prompt + reply) the model was trained to attend over."""
        return int(getattr(self.model.config, "max_position_embeddings", None) or 32768)

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids += configured if isinstance(configured, list) else [configured]
        ids.append(self.tokenizer.eos_token_id)
        # ChatML models end a turn with <|im_end|>, whatever their config says.
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            ids.append(im_end)
        return sorted({i for i in ids if isinstance(i, int)})

    def prompt_ids(self, messages: list[dict]) -> torch.Tensor:
        """Chat-template the messages (content flattened to text) into a 1 x n token tensor."""
        plain = [{"role": m["role"], "content": flatten_content(m["content"])} for m in messages]
        text = self.tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        return ids

    def generate_kwargs(self, input_ids: torch.Tensor, sampling: Sampling) -> dict:
        kwargs: dict[str, Any] = dict(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            max_new_tokens=sampling.max_new_tokens, eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id, repetition_penalty=sampling.repetition_penalty)
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:  # temperature 0 means greedy: the same answer every time
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def generate(self, messages: list[dict], sampling: Sampling, *,
                 cache_key: str | None = None) -> Generation:
        """Start generating a reply to `messages` in a worker thread.

        With a `cache_key` (a conversation id), the KV cache of that key's previous turn is
        reused for the prompt's common prefix, and this turn's cache is kept for the next.
        """
        return Generation(self, self.prompt_ids(messages), sampling, cache_key)

    def warm(self, messages: list[dict]) -> int:
        """Prefill the start every new conversation shares (system prompt and the user turn's
        header) and keep its KV cache, so a first turn only prefills the user's own words.
        Returns the number of tokens cached."""
        ids = self.prompt_ids([*messages, {"role": "user", "content": ""}])
        with self.lock, torch.inference_mode():
            cache = DynamicCache(config=self.model.config)
            self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        self.kv.share(ids[0], cache)
        return int(ids.shape[-1])

    def forget(self, cache_key: str) -> None:
        """Drop a conversation's cache (it was deleted)."""
        self.kv.forget(cache_key)
