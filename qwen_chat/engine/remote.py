"""`engine: openai`: replies come from an OpenAI-compatible server (vLLM on a GPU cluster,
llama.cpp server, Ollama, another Qwen Chat) instead of this computer's CPU. The page, the
conversations, the history and the /v1 API stay the same; only the engine is elsewhere.

Each reply is one streamed POST {base_url}/chat/completions; Stop closes the connection, which
ends the generation on servers that watch for it (this app's own /v1 does).
"""

from __future__ import annotations

import json
import threading
import time
import weakref

import httpx

from .reply import Reply, Sampling, flatten_content, stop_replies

CHARS_PER_TOKEN = 3  # no tokenizer here: prompt sizes are estimated (about 3 UTF-8 bytes a token)
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 600.0  # a busy server may queue a request for long


class RemoteReply(Reply):
    def __init__(self, engine: "RemoteEngine", messages: list[dict], sampling: Sampling):
        super().__init__(engine.count_tokens(messages))
        self.sampling = sampling
        body = {"model": engine.name, "messages": messages, "stream": True,
                "stream_options": {"include_usage": True},
                "temperature": sampling.temperature, "top_p": sampling.top_p,
                "max_tokens": sampling.max_new_tokens}
        if sampling.repetition_penalty != 1.0:  # vLLM and llama.cpp read it; others ignore it
            body["repetition_penalty"] = sampling.repetition_penalty
        for key in ("presence_penalty", "frequency_penalty"):  # OpenAI's own
            if getattr(sampling, key):
                body[key] = getattr(sampling, key)
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        self._thread = threading.Thread(target=self._run, args=(engine, body), daemon=True,
                                        name="qwen-chat-remote")
        self._thread.start()

    def _run(self, engine: "RemoteEngine", body: dict) -> None:
        started = time.perf_counter()
        first_at, pieces, error = None, 0, None
        try:
            with engine.client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"{engine.base_url} answered {response.status_code}: "
                                       f"{_error_message(response.read())}")
                for line in response.iter_lines():
                    if self.cancel.is_set():
                        break  # leaving the block closes the connection: the server stops
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        raise RuntimeError(_error_message(data.encode()))
                    usage = event.get("usage") or {}
                    if usage.get("completion_tokens") is not None:
                        self.stats.new_tokens = int(usage["completion_tokens"])
                    if usage.get("prompt_tokens") is not None:
                        self.stats.prompt_tokens = int(usage["prompt_tokens"])
                    for choice in event.get("choices") or []:
                        if choice.get("finish_reason"):
                            self.finish_reason = choice["finish_reason"]
                        text = (choice.get("delta") or {}).get("content")
                        if not text:
                            continue
                        now = time.perf_counter()
                        if first_at is None:
                            first_at, self.stats.ttft = now, now - started
                        pieces += 1
                        self.stats.new_tokens = pieces  # until the server's usage says better
                        if pieces > 1 and now > first_at:
                            self.stats.tokens_per_s = (pieces - 1) / (now - first_at)
                        self._pieces.put(text)
        except httpx.HTTPError as exc:
            error = RuntimeError(f"cannot reach {engine.base_url} ({type(exc).__name__}: {exc})")
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, who shows it
            error = exc
        finally:
            self._end(error)


def _error_message(raw: bytes) -> str:
    try:
        error = json.loads(raw).get("error")
        return str(error.get("message") if isinstance(error, dict) else error)
    except (ValueError, AttributeError):
        return raw[:200].decode("utf-8", "replace")


class RemoteEngine:
    """The engine contract (contract.ChatEngine), served by an OpenAI-compatible server."""

    precision = "remote"
    ready = True  # nothing to load here
    constrained = False  # /v1 refuses tools, JSON output and logprobs with this engine
    progress = None
    context_length = 32768  # unknown here: the server refuses what does not fit
    threads = 0  # the server's business
    kv_bytes = 0  # the server keeps its own caches

    def __init__(self, base_url: str, model: str, *, api_key: str = "", max_batch: int = 4):
        self.base_url, self.name, self.max_batch = base_url.rstrip("/"), model, max_batch
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers,
                                   timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT))
        self.waiting = 0
        self._replies: "weakref.WeakSet[RemoteReply]" = weakref.WeakSet()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return True

    def count_tokens(self, messages: list[dict], tools: list[dict] | None = None) -> int:
        text = "".join(flatten_content(m["content"]) for m in messages) + json.dumps(tools or "")
        return len(text.encode("utf-8")) // CHARS_PER_TOKEN + 4 * len(messages) + 3

    def token_bytes(self, ids: list[int]) -> list[bytes]:
        raise NotImplementedError("log-probabilities are served by the local engine only")

    def generate(self, messages: list[dict], sampling: Sampling, *,
                 cache_key: str | None = None, cache_family: str | None = None,
                 tools: list[dict] | None = None) -> RemoteReply:
        if tools or sampling.grammar or sampling.logprobs is not None:
            raise NotImplementedError("tools, JSON output and log-probabilities are served by "
                                      "the local engine only (not with engine: openai)")
        plain = [{"role": m["role"], "content": flatten_content(m["content"])} for m in messages]
        reply = RemoteReply(self, plain, sampling)
        self._replies.add(reply)
        return reply

    def warm(self, messages: list[dict]) -> int:
        return 0

    def forget(self, cache_key: str) -> None:
        pass

    def prepare(self, messages: list[dict], cache_key: str) -> threading.Event:
        done = threading.Event()  # the server has no drafts: nothing to prefill ahead
        done.set()
        return done

    def adopt(self, draft_key: str, cache_key: str) -> None:
        pass

    def stop_all(self, timeout: float = 5.0) -> None:
        stop_replies(list(self._replies), timeout)
