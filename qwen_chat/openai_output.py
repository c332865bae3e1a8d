"""What /v1 answers: a reply as OpenAI's chat completion, whole or as a stream of chunks.

Text, stop strings, tool calls (openai_tools.py: <tool_call> blocks become `tool_calls`, and
`finish_reason: "tool_calls"`), log-probabilities (`logprobs.content`, each token with its text,
bytes and top alternatives) and usage, in the shapes OpenAI's clients parse.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable, Iterator

from .engine.contract import Reply, TokenLogprob
from .openai_tools import ToolCallParser

TokenBytes = Callable[[list[int]], list[bytes]]  # the engine's token_bytes


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def logprobs_object(entries: list[TokenLogprob], token_bytes: TokenBytes) -> dict:
    """OpenAI's `logprobs`: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}."""
    ids = sorted({e.token for e in entries} | {t for e in entries for t, _ in e.top})
    raw = dict(zip(ids, token_bytes(ids))) if ids else {}

    def item(token: int, logprob: float) -> dict:
        data = raw[token]
        return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob,
                "bytes": list(data)}

    return {"content": [{**item(e.token, e.logprob),
                         "top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries],
            "refusal": None}


def usage(prompt_tokens: int, reply: Reply) -> dict:
    n = reply.stats.new_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": n,
            "total_tokens": prompt_tokens + n,
            "prompt_tokens_details": {"cached_tokens": reply.stats.cached_tokens}}


class Output:
    """One reply to one request, turned into OpenAI's objects. Feed it the reply's text as it
    comes (`pieces`): it cuts at stop strings and tells tool calls apart from text."""

    def __init__(self, req, reply: Reply, token_bytes: TokenBytes) -> None:
        self.req, self.reply, self.token_bytes = req, reply, token_bytes
        self.parser = ToolCallParser(req.tool_names) if req.tool_names else None
        self.text = ""  # all the content text so far (tool calls left out)
        self.stopped = False  # cut at a stop string
        self._sent_logprobs = 0

    def events(self, piece: str) -> list[tuple[str, object]]:
        """("text", str) and ("call", ToolCall) for this piece of the reply."""
        return self._apply(self.parser.feed(piece) if self.parser else [("text", piece)])

    def finish(self) -> list[tuple[str, object]]:
        """The end of the reply: what the tool-call parser still holds, as text."""
        return self._apply(self.parser.finish()) if self.parser else []

    def _apply(self, events: Iterable[tuple[str, object]]) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        for kind, value in events:
            if self.stopped:
                break
            if kind == "text":
                before = len(self.text)
                self.text, self.stopped = cut_at_stop(self.text + str(value), self.req.stops)
                if len(self.text) > before:
                    out.append(("text", self.text[before:]))
            else:
                out.append((kind, value))
        return out

    @property
    def calls(self) -> list:
        return self.parser.calls if self.parser else []

    def finish_reason(self) -> str:
        if self.calls:
            return "tool_calls"
        return "stop" if self.stopped else self.reply.finish_reason

    def new_logprobs(self) -> dict | None:
        """The log-probabilities of the tokens not yet sent (None when not asked for)."""
        if self.req.logprobs is None or self.reply.logprobs is None:
            return None
        entries = self.reply.logprobs[self._sent_logprobs:]
        self._sent_logprobs += len(entries)
        return logprobs_object(entries, self.token_bytes)

    def completion(self, ident: str, created: int, model_id: str) -> dict:
        """The whole reply as one chat.completion."""
        message = {"role": "assistant", "content": self.text.strip() if self.calls else self.text}
        if self.calls:
            message["content"] = message["content"] or None
            message["tool_calls"] = [c.openai() for c in self.calls]
        return {"id": ident, "object": "chat.completion", "created": created, "model": model_id,
                "choices": [{"index": 0, "message": message, "logprobs": self.new_logprobs(),
                             "finish_reason": self.finish_reason()}],
                "usage": usage(self.req.prompt_tokens, self.reply)}

    def chunks(self, pieces: Iterator[str], ident: str, created: int, model_id: str) -> Iterator[str]:
        """The reply as server-sent events of chat.completion.chunk objects (pieces of text as
        they come, "" for a heartbeat), ending with [DONE]."""
        def chunk(delta: dict | None, finish: str | None = None, with_usage: bool = False) -> str:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish,
                                                 "logprobs": self.new_logprobs() if delta else None}]
            data = {"id": ident, "object": "chat.completion.chunk", "created": created,
                    "model": model_id, "choices": choices}
            if self.req.include_usage:  # OpenAI: null in every chunk but the last (no choices)
                data["usage"] = usage(self.req.prompt_tokens, self.reply) if with_usage else None
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        calls = 0
        for piece in pieces:
            if not piece:
                continue  # a heartbeat
            for event in self.events(piece):
                yield self._delta(chunk, event, calls)
                calls += event[0] == "call"
            if self.stopped:
                break
        for event in self.finish():
            yield self._delta(chunk, event, calls)
            calls += event[0] == "call"
        yield chunk({}, self.finish_reason())
        if self.req.include_usage:
            yield chunk(None, with_usage=True)
        yield "data: [DONE]\n\n"

    @staticmethod
    def _delta(chunk, event: tuple[str, object], index: int) -> str:
        kind, value = event
        if kind == "text":
            return chunk({"content": value})
        return chunk({"tool_calls": [value.openai(index)]})
