"""One reply of the local engine (`Generation`) and its incremental detokenizer (`Streamer`).

The scheduler (scheduler.py) adds each new token with `add_token` and ends the reply with `finish`;
the front end iterates the text pieces the streamer hands out.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache, TextIteratorStreamer

from .reply import Reply, Sampling, TokenLogprob
from .sampling import sample, top_k

if TYPE_CHECKING:
    from .local import Engine


class Streamer(TextIteratorStreamer):
    """transformers' streamer, fed with put/end by the scheduler: it hands out text at once,
    except a token that ends inside a multi-byte character (Chinese, emoji), which waits for
    the rest. (The base class also holds English back to the last space, which delays the
    first word on the page by a decode step; byte-level BPE never rewrites decoded text.)"""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)

    def put(self, value: torch.Tensor) -> None:
        self.token_cache.extend(value.tolist())
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\ufffd"):
            return
        printable, self.print_len = text[self.print_len:], len(text)
        if text.endswith("\n"):  # a line is complete: decode from here on
            self.token_cache, self.print_len = [], 0
        if printable:
            self.on_finalized_text(printable)

    def flush(self) -> None:
        """Hand out what is held back (half a character at the very end), the stream open."""
        if self.token_cache:
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            printable, self.token_cache, self.print_len = text[self.print_len:], [], 0
            if printable:
                self.on_finalized_text(printable)


class Generation(Reply):
    """One reply of this engine."""

    def __init__(self, engine: "Engine", input_ids: torch.Tensor, sampling: Sampling,
                 cache_key: str | None = None):
        super().__init__(int(input_ids.shape[-1]))
        self.input_ids = input_ids[0]
        self.sampling, self.cache_key = sampling, cache_key
        self.rng: torch.Generator | None = None  # the reply's own draws, when it has a seed
        if sampling.seed is not None:
            self.rng = torch.Generator().manual_seed(sampling.seed)
        self.cache: DynamicCache | None = None  # this reply's keys/values while it is not batched
        self.tokens: list[int] = []  # generated so far (the last one is not yet in the cache)
        self._eos = engine.eos_token_ids
        self._started = time.perf_counter()
        self._first_at: float | None = None
        # Text is decoded incrementally (only the tokens since the last line break), never
        # the whole reply per token; its queue is the one this Reply is iterated from.
        self.streamer = Streamer(engine.tokenizer)
        self._pieces = self.streamer.text_queue
        # Constrained decoding (grammar.py): made before submit, so a bad grammar fails here.
        self.constraint = engine.grammars.constraint(sampling.grammar) if sampling.grammar else None
        self.logprobs = [] if sampling.logprobs is not None else None
        engine.submit(self)

    @property
    def length(self) -> int:
        """Tokens whose keys and values are cached: the prompt and all but the last new token."""
        return len(self.input_ids) + len(self.tokens) - 1

    def add_token(self, token: int) -> None:
        now = time.perf_counter()
        if self._first_at is None:
            self._first_at = now
            self.stats.ttft = now - self._started
        self.tokens.append(token)
        self.stats.new_tokens = len(self.tokens)
        if len(self.tokens) > 1 and now > self._first_at:
            self.stats.tokens_per_s = (len(self.tokens) - 1) / (now - self._first_at)
        self.streamer.put(torch.tensor([token]))

    def choose(self, logits: torch.Tensor, top_k: int) -> int:
        """The next token from this step's `logits` (a 1-D row the engine hands over and does
        not use again): within the grammar if the reply has one, by its sampling settings;
        its log-probability kept if asked for."""
        with torch.inference_mode():  # the logits are the model's (inference) tensor
            if self.constraint is not None:
                self.constraint.mask(logits)
            token = sample(logits, self.sampling, top_k, self.input_ids, self.tokens, self.rng)
            if self.logprobs is not None:
                self.logprobs.append(token_logprob(logits, token, self.sampling.logprobs or 0))
        if self.constraint is not None:
            self.constraint.advance(token)
        return token

    def finish(self, error: BaseException | None = None) -> None:
        """The reply is over (ended, stopped or failed): release the consumer."""
        if self._done.is_set():
            return
        self._error = error  # before the stream's end, where its reader checks it
        self.streamer.end()
        self._end(error, signal=False)

    @property
    def token_ids(self) -> list[int]:
        """The reply's tokens as generated, its end-of-turn token left out. Stored with the
        reply, they stand for its text in the next turn's prompt (Engine.prompt_ids)."""
        ends = bool(self.tokens) and self.tokens[-1] in self._eos
        return self.tokens[:-1] if ends else list(self.tokens)

    @property
    def finish_reason(self) -> str:
        """"length" when the reply was cut at max_new_tokens, else "stop" (ended or stopped)."""
        ended = bool(self.tokens) and self.tokens[-1] in self._eos
        return "length" if not ended and len(self.tokens) >= self.sampling.max_new_tokens else "stop"


def token_logprob(logits: torch.Tensor, token: int, alternatives: int) -> TokenLogprob:
    """`token`'s log-probability under `logits` (as the model gave them, or as a grammar left
    them) and the `alternatives` most likely tokens with theirs."""
    logp = torch.log_softmax(logits.float(), -1)
    top = ()
    if alternatives:
        values, ids = top_k(logp, alternatives)
        top = tuple((int(i), float(v)) for i, v in zip(ids, values))
    return TokenLogprob(token, float(logp[token]), top)
