"""Streaming generation on CPU: one scheduler thread decodes every running reply together.

The engine knows nothing about conversations or storage: it turns a list of chat messages into a
stream of text pieces. Replies wait in arrival order; up to `max_batch` of them are generated
together, one decode step (one forward pass over a batch) at a time. Decoding is memory bound on a
CPU: a step reads every weight once whatever the batch size, so four conversations together give
about twice the total tokens per second of four one after another (measured by bench/batch.py).

Each `Generation` owns a cancel event checked before every step, so closing it (Stop, a closed tab)
ends its reply within one step and leaves the others running.

While no reply runs, the engine prefills messages being typed (`prepare`), so that Send only
prefills what was typed since the last draft and the assistant's header: a first token in about
one decode step, at any turn.
"""

from __future__ import annotations

import atexit
import inspect
import secrets
import threading
import time
import weakref
from collections import Counter, deque

import torch
from transformers import DynamicCache

from . import prompt
from .batching import Batch
from .drafts import NO_LOGITS, DraftPrefill
from .scheduler import Scheduler
from .generation import Generation, Streamer  # noqa: F401 - Streamer re-exported
from .kvcache import KVCacheStore
from .reply import Reply, Sampling, Stats, flatten_content, stop_replies  # noqa: F401 - re-exported
from .grammar import Grammars
from .sampling import DEFAULT_TOP_K
from .threads import ThreadGovernor

_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()


def cache_arg(model) -> str:
    """The name under which `model.forward` takes a KV cache: transformers renamed
    `past_key_values` to `cache` (5.2x; the old name goes in 5.40). A forward that only passes
    *args and **kwargs on (a wrapper, a subclass) is looked through to the one it calls."""
    for cls in type(model).__mro__:
        if "forward" in vars(cls):
            params = inspect.signature(vars(cls)["forward"]).parameters
            for name in ("cache", "past_key_values"):
                if name in params:
                    return name
    return "past_key_values"


class Engine(Scheduler, DraftPrefill):
    """A loaded causal LM and its tokenizer, generating up to `max_batch` replies together
    (the engine contract, contract.ChatEngine, on this CPU). Its scheduler loop is its
    Scheduler part (scheduler.py); messages being typed are prefilled by its DraftPrefill
    part (drafts.py)."""

    ready = True  # see loading.LoadingEngine, which stands in for an engine while it loads
    constrained = True  # grammars (Sampling.grammar), tools and log-probabilities are served
    progress = None

    def __init__(self, model, tokenizer, *, name: str = "", kv_cache_mb: int = 256,
                 max_batch: int = 4, threads: ThreadGovernor | None = None,
                 autostart: bool = True):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.max_batch = max(1, max_batch)
        self.lock = threading.Lock()  # held during each forward pass (warm() takes it too)
        self.kv = KVCacheStore(kv_cache_mb)
        self.eos_token_ids = self._eos_ids()
        self.turn_gap = prompt.turn_gap_ids(tokenizer)  # prefilled when a reply ends (_end)
        self.prompts = prompt.PromptCache(tokenizer)
        vocab = getattr(model.config, "vocab_size", None) or len(tokenizer)
        self.grammars = Grammars(tokenizer, vocab)  # constrained decoding (grammar.py)
        self.top_k = getattr(model.generation_config, "top_k", None) or DEFAULT_TOP_K
        self.step_sizes: Counter[int] = Counter()  # decode steps run, by number of replies
        self._cache_arg = cache_arg(model)
        self._waiting: deque[Generation] = deque()
        self._wake = threading.Condition()
        self._scheduler: threading.Thread | None = None
        self._autostart = autostart  # False: a test drives step() itself
        self._running: list[Generation] = []  # the scheduler's: replies being decoded
        self._batch: Batch | None = None  # their stacked caches, while more than one runs
        # The model's thread count (threads.py); by default fixed at what torch has now.
        self.governor = threads or ThreadGovernor(torch.get_num_threads(), adaptive=False)
        self._jobs: deque = deque()  # other model work (warm) for the scheduler's thread
        # Messages being typed, by cache key: the latest draft's prompt ids, and an event set
        # once it has been prefilled, skipped or replaced. Run only while no reply needs the CPU.
        self._drafts: dict[str, tuple[torch.Tensor, threading.Event]] = {}
        self._closing = False  # set by stop_all: no more drafts, no more forward passes
        self._resting = threading.Event()  # set while the scheduler waits for work, idle
        self._replies: "weakref.WeakSet[Generation]" = weakref.WeakSet()  # not yet finished

        _engines.add(self)

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

    def wait_ready(self, timeout: float | None = None) -> bool:
        return True  # loaded: see startup.LoadingEngine for the wait while it loads

    @property
    def kv_bytes(self) -> int:
        return self.kv.nbytes

    @property
    def threads(self) -> int:
        """Threads the model computes with now (fewer while other programs keep cores busy)."""
        return self.governor.threads or self.governor.max_threads

    @property
    def precision(self) -> str:
        """The weights' precision; with `precision: auto`, also what calibrate.py measured."""
        calibration = getattr(self.model, "calibration", None)
        if calibration is not None:
            return calibration.summary()
        name = getattr(self.model, "precision", str(self.model.dtype).replace("torch.", ""))
        if getattr(self.model, "kernel", "") != "digits":
            return name
        return "int8 digits" if name == "int8" else f"{name} (lm_head: int8 digits)"

    def count_tokens(self, messages: list[dict], tools: list[dict] | None = None) -> int:
        """Prompt tokens of `messages` (and `tools`) once chat-templated."""
        return len(self.prompts.ids(messages, tools))

    def prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> torch.Tensor:
        """The messages as a 1 x n prompt tensor (see prompt.prompt_ids: replies keep their ids)."""
        return torch.tensor([self.prompts.ids(messages, tools)], dtype=torch.long)

    def token_bytes(self, ids: list[int]) -> list[bytes]:
        """Each token's own bytes (for log-probabilities)."""
        return prompt.token_bytes(self.tokenizer, ids)

    def generate(self, messages: list[dict], sampling: Sampling, *,
                 cache_key: str | None = None, cache_family: str | None = None,
                 tools: list[dict] | None = None) -> Generation:
        """Queue a reply to `messages`; it streams as soon as the engine has room for it.

        With a `cache_key` (a conversation id), the KV cache of that key's previous turn is
        reused for the prompt's common prefix, and this turn's cache is kept for the next.
        With a `cache_family` (clients that send the whole history and no id), the family's
        cache that this prompt continues is reused; one it only shares a start with is copied
        (a retry, another client), so that clients taking turns each keep theirs.
        """
        ids = self.prompt_ids(messages, tools)
        if cache_key is None and cache_family is not None:
            closest, continued = self.kv.closest(f"{cache_family}:", ids[0])
            cache_key = closest if continued else f"{cache_family}:{secrets.token_hex(8)}"
            if closest and not continued:  # a branch (a retry, another client): copy, keep both
                self.kv.fork(closest, cache_key)
        return Generation(self, ids, sampling, cache_key)

    def submit(self, generation: Generation) -> None:
        with self._wake:
            self._drop_draft(generation.cache_key)  # it was typed for this very prompt
            self._replies.add(generation)
            self._waiting.append(generation)
            self._run_scheduler()

    def _run_scheduler(self) -> None:
        """Start the scheduler's thread if it is not running (call with self._wake held)."""
        if self._scheduler is None and self._autostart:
            self._scheduler = threading.Thread(target=self._schedule, name="qwen-chat-engine",
                                               daemon=True)
            self._scheduler.start()
        self._wake.notify()

    def warm(self, messages: list[dict]) -> int:
        """Prefill the start every new conversation shares (system prompt and the user turn's
        header) and keep its KV cache, so a first turn only prefills the user's own words.
        Runs on the scheduler's thread, like all model work. Returns the number of tokens cached."""
        ids = self.prompt_ids([*messages, {"role": "user", "content": ""}])
        done, failed = threading.Event(), []

        def job() -> None:
            try:
                with self.lock, torch.inference_mode():
                    cache = DynamicCache(config=self.model.config)
                    self._forward(cache, input_ids=ids, logits_to_keep=NO_LOGITS)
                self.kv.share(ids[0], cache)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                failed.append(exc)
            finally:
                done.set()

        with self._wake:
            self._jobs.append(job)
            self._run_scheduler()
        done.wait()
        if failed:
            raise failed[0]
        return int(ids.shape[-1])

    def forget(self, cache_key: str) -> None:
        """Drop a conversation's cache (it was deleted)."""
        with self._wake:
            self._drop_draft(cache_key)
        self.kv.forget(cache_key)

    @property
    def waiting(self) -> int:
        """Replies queued for room in the batch."""
        with self._wake:
            return len(self._waiting)

    def stop_all(self, timeout: float = 5.0) -> None:
        """The app is closing: cancel every reply, running or waiting, drop the drafts (none is
        prefilled from now on), and wait (bounded) until the replies have ended and the
        scheduler rests. A torch op still running in its thread while Python exits aborts the
        process ("terminate called without an active exception")."""
        with self._wake:
            replies = list(self._replies)
        started = time.monotonic()
        stop_replies(replies, timeout)  # each ends as stopped, within one step
        with self._wake:
            self._closing = True  # from now on no forward pass starts (see _forward)
            for key in list(self._drafts):
                self._drop_draft(key)
            started_scheduler = self._scheduler is not None
        if started_scheduler:
            self._resting.wait(max(0.0, timeout - (time.monotonic() - started)))

    def _forward(self, cache: DynamicCache, **inputs):
        """One forward pass that reads and extends `cache`; call it with self.lock held. Once
        stop_all has run, none starts: the process may be exiting (see stop_all)."""
        if self._closing:
            raise RuntimeError("The app is closing.")
        self.governor.before_pass()
        return self.model(**inputs, **{self._cache_arg: cache}, use_cache=True)


@atexit.register
def _stop_engines() -> None:
    """A forward pass still running while Python exits aborts the process ("terminate called"):
    end every reply first."""
    for engine in list(_engines):
        engine.stop_all()
