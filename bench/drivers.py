"""One conversation, timed at the client, for each thing bench/app.py measures.

Every driver is a `Converse`: it takes the user messages of one fresh conversation, sends them
one turn at a time with the growing history (as a real client does), and yields one `Turn`
per message as it ends. Times are taken where the caller sees the text: time to first token is from the
request to the first non-empty piece of text; decode speed is (tokens - 1) / (last piece -
first piece). Tokens are the server's own count (the /chat update's `new_tokens`, /v1's
`usage.completion_tokens`, the engine's `stats.new_tokens`), never re-tokenized text.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator


@dataclass
class Turn:
    new_tokens: int
    ttft_s: float
    decode_s: float  # from the first piece of text to the last
    prompt_tokens: int | None = None  # where the server says
    server_ttft_s: float | None = None  # the app's own figure, where it gives one (diagnosis)

    @property
    def tok_s(self) -> float | None:
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else None


Converse = Callable[[list[str]], Iterator[Turn]]


class Clock:
    """Stamps one request: started now; `text()` at every piece of text the client receives."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None

    def text(self) -> None:
        self.last = time.perf_counter()
        self.first = self.first or self.last

    def turn(self, new_tokens: int, prompt_tokens: int | None = None,
             server_ttft_s: float | None = None) -> Turn:
        if self.first is None or self.last is None:
            raise RuntimeError("the reply carried no text")
        return Turn(new_tokens, self.first - self.start, self.last - self.first, prompt_tokens,
                    server_ttft_s)


def _chat(send: Callable[[str, str], Iterator[dict]]) -> Converse:
    """A conversation on the page's script route `/chat`: `send(conversation_id, message)`
    yields the route's updates, each carrying the whole reply so far; the conversation id
    continues the history."""

    def converse(messages: list[str]) -> Iterator[Turn]:
        conversation = ""
        for message in messages:
            clock, shown, final = Clock(), "", None
            for update in send(conversation, message):
                if update["text"] and update["text"] != shown:
                    shown = update["text"]
                    clock.text()
                final = update
            if not final or final["status"] != "complete":
                raise RuntimeError(f"/chat reply ended as {final and final['status']}: "
                                   f"{final and final['error']}")
            conversation = final["conversation_id"]
            yield clock.turn(final["new_tokens"], server_ttft_s=final["ttft"])

    return converse


def chat_route(url: str) -> Converse:
    """`/chat` through gradio_client, as README.md's Python example uses it. gradio_client
    2.7's own delivery adds to every update (measured: median 44 ms, up to 1 s): its reader
    thread polls every 50 ms, and its Job iterator sleeps holding the lock that thread needs.
    So this row times the client library too; chat_http times the route."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    owner = secrets.token_hex(16)
    return _chat(lambda conversation, message: client.submit(owner, conversation, message,
                                                             api_name="/chat"))


def chat_http(url: str) -> Converse:
    """`/chat` over Gradio's own HTTP protocol, as `curl` (README.md), a script in any language,
    or the page's JavaScript client reads it: POST the inputs to `gradio_api/call/chat`, then
    read the reply's updates as server-sent events. No client library between app and clock."""
    http = chat_client(url, timeout=900)
    owner = secrets.token_hex(16)

    def send(conversation: str, message: str) -> Iterator[dict]:
        for event, update in chat_events(http, owner, conversation, message):
            if event == "error":
                raise RuntimeError(f"/chat failed: {update}")
            yield update

    return _chat(send)


def chat_client(url: str, *, timeout: float) -> Any:
    """An httpx.Client for chat_events, based at the app's `gradio_api/call/chat` (no proxy)."""
    import httpx

    return httpx.Client(base_url=f"{url.rstrip('/')}/gradio_api/call/chat", trust_env=False,
                        timeout=timeout)


def chat_events(http: Any, owner: str, conversation_id: str, message: str) -> Iterator[tuple[str, Any]]:
    """One message on `/chat` over Gradio's HTTP protocol, with `http` a chat_client: POST the inputs, then the reply's server-sent events as
    ("generating" or "complete", update) pairs, or ("error", what the server said)."""
    import json

    posted = http.post("", json={"data": [owner, conversation_id, message]})
    posted.raise_for_status()
    event = ""
    with http.stream("GET", f"/{posted.json()['event_id']}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "error":
                yield event, line[5:].strip()
            elif line.startswith("data:") and event in ("generating", "complete"):
                yield event, json.loads(line[5:])[0]


def openai_stream(base_url: str, *, system: str, max_tokens: int, model: str | None = None) -> Converse:
    """`/v1/chat/completions`, streamed, with the official openai client; it keeps no state,
    so every turn sends the whole conversation. Sampling is left to the server's defaults."""
    import httpx
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="none",  # loopback: no proxy from the environment
                    http_client=httpx.Client(trust_env=False, timeout=900))
    model = model or client.models.list().data[0].id

    def converse(messages: list[str]) -> Iterator[Turn]:
        history: list[dict] = [{"role": "system", "content": system}]
        for message in messages:
            history.append({"role": "user", "content": message})
            clock, parts, usage = Clock(), [], None
            stream = client.chat.completions.create(
                model=model, messages=history, max_tokens=max_tokens, stream=True,
                stream_options={"include_usage": True})
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:  # not the role-only chunk
                    parts.append(chunk.choices[0].delta.content)
                    clock.text()
                usage = chunk.usage or usage
            if usage is None:
                raise RuntimeError(f"{base_url}: the stream ended without usage")
            history.append({"role": "assistant", "content": "".join(parts)})
            yield clock.turn(usage.completion_tokens, usage.prompt_tokens)

    return converse


def engine_alone(engine: Any, *, system: str, sampling: Any) -> Converse:
    """The app's engine in this process, fed as ChatService feeds it: the system prompt, the
    history with each reply's own token ids, one cache key per conversation."""

    def converse(messages: list[str]) -> Iterator[Turn]:
        history: list[dict] = [{"role": "system", "content": system}]
        key = f"bench-{uuid.uuid4().hex}"
        for message in messages:
            history.append({"role": "user", "content": message})
            clock, parts = Clock(), []
            reply = engine.generate(history, sampling, cache_key=key)
            for piece in reply:
                if piece:  # "" is a heartbeat
                    parts.append(piece)
                    clock.text()
            history.append({"role": "assistant", "content": "".join(parts),
                            "token_ids": reply.token_ids})
            yield clock.turn(reply.stats.new_tokens, reply.stats.prompt_tokens, reply.stats.ttft)
        engine.forget(key)

    return converse


def transformers_baseline(baseline: Any, *, system: str, max_tokens: int) -> Converse:
    """bench.py's Baseline (fp32, `generate` + TextIteratorStreamer in a thread, the whole
    history re-prefilled each turn); its streamer stamps each token as generate() hands it over."""

    def converse(messages: list[str]) -> Iterator[Turn]:
        history: list[dict] = [{"role": "system", "content": system}]
        for message in messages:
            history.append({"role": "user", "content": message})
            reply, t = baseline.reply(history, max_tokens, "")
            history.append(reply)
            decode_s = (t.ms_per_token or 0) * (t.new_tokens - 1) / 1000
            yield Turn(t.new_tokens, t.ttft_s, decode_s, t.prompt_tokens)

    return converse
