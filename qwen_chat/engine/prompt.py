"""Prompts: chat messages into token ids, with each reply's own token ids kept where known.

Re-tokenizing a reply's text often gives other ids than the model generated (measured: 4 of 28
SmolLM2 replies, at a "\n\n" generated as two tokens or a Chinese character cut at the token
limit). The KV cache is reused only up to the first id where a new prompt differs from the
cached one (kvcache.py), so such a reply would make every later turn prefill the rest of the
history again. A reply message may therefore carry the `token_ids` it was generated as
(ChatService stores them with the reply); they stand for its text while they spell it exactly.
"Spell" as the reply was shown: without special tokens. A model can generate one mid-reply
(measured: 4 of 200 tiny random-model replies, e.g. "<|im_start|>"); the stream leaves it out
of the text, but the KV cache holds it, and so does the next prompt.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

from .reply import flatten_content

_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters: markers no message contains


def template(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The chat template's text for `messages`, ending where the assistant's reply starts;
    `tools` (OpenAI's {"type": "function", "function": {...}}) rendered by the template where it
    knows them (Qwen2.5's does), else described in the system message the same way."""
    knows_tools = "tools" in (tokenizer.chat_template or "")
    if not knows_tools and (tools or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)):
        messages, tools = with_tools_described(messages, tools or []), None
    return tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                         tokenize=False)


TOOLS_TEXT = ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
              "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
              "{tools}\n</tools>\n\nFor each function call, return a json object with function name "
              "and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
              '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>')


def with_tools_described(messages: list[dict], tools: list[dict]) -> list[dict]:
    """For a template that ignores `tools`: Qwen2.5's tool instructions appended to the system
    message, tool calls and results written into the turns as that format has them."""
    out = [dict(m) for m in messages]
    if tools:
        described = TOOLS_TEXT.format(tools="".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0]["content"] = flatten_content(out[0]["content"]) + described
        else:
            out.insert(0, {"role": "system", "content": described.lstrip("\n")})
    for m in out:
        calls = m.pop("tool_calls", None)
        if m["role"] == "assistant" and calls:
            blocks = "".join("\n<tool_call>\n" + json.dumps(
                {"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                ensure_ascii=False) + "\n</tool_call>" for c in calls)
            m["content"] = (flatten_content(m.get("content")) + blocks).lstrip("\n")
        elif m["role"] == "tool":
            m.update(role="user", content=f"<tool_response>\n{flatten_content(m['content'])}\n</tool_response>")
    return out


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _plain(m: dict) -> dict:
    """A message as the template takes it: text content, tool calls (arguments as objects, as
    templates render them with tojson) and a tool result's id kept."""
    out = {"role": m["role"], "content": flatten_content(m.get("content"))}
    if m.get("tool_calls"):
        out["tool_calls"] = m["tool_calls"]
    for key in ("tool_call_id", "name"):
        if m.get(key):
            out[key] = m[key]
    return out


def prompt_ids(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """The templated prompt's token ids; replies with valid `token_ids` keep them."""
    plain = [_plain(m) for m in messages]
    text = template(tokenizer, plain, tools)
    exact = {i: m["token_ids"] for i, m in enumerate(messages) if m.get("token_ids")
             and not m.get("tool_calls")
             and tokenizer.decode(m["token_ids"], skip_special_tokens=True) == plain[i]["content"]}
    spliced = _splice(tokenizer, plain, exact, text, tools) if exact else None
    return spliced if spliced is not None else _ids(tokenizer, text)


def _splice(tokenizer, plain: list[dict], exact: dict[int, list[int]],
            text: str, tools: list[dict] | None = None) -> list[int] | None:
    """The prompt's ids with `exact` messages' ids in place of their text: the template is
    rendered with a marker for each such message, the text between markers tokenized, and the
    ids put between. None when the template does not place each content verbatim."""
    marks = {i: f"{_OPEN}{i}{_CLOSE}" for i in exact}
    rest = template(tokenizer, [{**m, "content": marks[i]} if i in marks else m
                                for i, m in enumerate(plain)], tools)
    ids: list[int] = []
    rebuilt: list[str] = []
    for i in sorted(exact):
        before, found, rest = rest.partition(marks[i])
        if not found:
            return None
        ids += _ids(tokenizer, before) + exact[i]
        rebuilt += [before, plain[i]["content"]]
    if "".join(rebuilt) + rest != text:
        return None
    return ids + _ids(tokenizer, rest)


def turn_gap_ids(tokenizer) -> list[int]:
    """The template's tokens between a reply's last word and the next user message's first
    ("<|im_end|>\n<|im_start|>user\n" for ChatML). They are known before the user writes, so
    the engine prefills them when a reply ends, while the user reads and types."""
    try:
        text = template(tokenizer, [{"role": "user", "content": "?"},
                                    {"role": "assistant", "content": _OPEN},
                                    {"role": "user", "content": _CLOSE}])
    except Exception:  # noqa: BLE001 - a template that refuses this shape: no head start
        return []
    return _ids(tokenizer, text.partition(_OPEN)[2].partition(_CLOSE)[0])


class PromptCache:
    """prompt_ids, remembered for the last `size` message lists: a request is counted (its
    length checked against the budget) and then generated, and templating and tokenizing a
    long history twice cost 10-20 ms of its first token."""

    def __init__(self, tokenizer, size: int = 8) -> None:
        self.tokenizer, self.size = tokenizer, size
        self._ids: OrderedDict[str, list[int]] = OrderedDict()
        self._lock = threading.Lock()

    def ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        key = json.dumps([messages, tools], ensure_ascii=False, sort_keys=True, default=str)
        with self._lock:
            found = self._ids.get(key)
        if found is not None:
            return found
        ids = prompt_ids(self.tokenizer, messages, tools)
        with self._lock:
            self._ids[key] = ids
            while len(self._ids) > self.size:
                self._ids.popitem(last=False)
        return ids


def _byte_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's table), reversed."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
            *range(ord("\xae"), ord("\xff") + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


_BYTES = _byte_alphabet()


def token_bytes(tokenizer, ids: list[int]) -> list[bytes]:
    """Each token's own bytes (a token may hold part of a UTF-8 character)."""
    out = []
    for token_id, token in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
        if token is not None and all(ch in _BYTES for ch in token):
            out.append(bytes(_BYTES[ch] for ch in token))
        else:  # not byte-level BPE (SentencePiece's "▁", an added token): its text
            out.append(tokenizer.decode([token_id]).encode("utf-8"))
    return out
