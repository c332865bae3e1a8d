"""Tool calls for /v1: OpenAI's `tools` in, the model's <tool_call> blocks out as `tool_calls`.

Qwen2.5 is trained to call functions in the format its chat template teaches (the template also
renders `tools`, assistant `tool_calls` and `tool` results): a reply holds one or more blocks

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

`ToolCallParser` reads a reply as it streams and tells text apart from such blocks; a block that
does not parse as a call of one of the request's tools is handed on as text, never dropped (a
model that writes a broken call gets its words back, not a 500). With `tool_choice: "required"`
or a named function the reply is held to the format by constrained decoding (engine/grammar.py).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as OpenAI sends it
    id: str

    def openai(self, index: int | None = None) -> dict:
        call = {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}
        return call if index is None else {"index": index, **call}


def parse_call(block: str, names: set[str]) -> ToolCall | None:
    """One block's call, or None if it is not a JSON object naming one of `names` with an
    object of arguments."""
    try:
        data = json.loads(block)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("name") not in names:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(data["name"], json.dumps(arguments, ensure_ascii=False),
                    f"call_{secrets.token_hex(12)}")


class ToolCallParser:
    """Feed a reply's text as it comes; get back ("text", str) and ("call", ToolCall) events in
    order. Text that might be the start of a block is held until it is known not to be."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.calls: list[ToolCall] = []
        self._held = ""
        self._in_block = False

    def feed(self, text: str) -> list[tuple[str, object]]:
        self._held += text
        events: list[tuple[str, object]] = []
        while True:
            if not self._in_block:
                start = self._held.find(OPEN)
                if start < 0:
                    keep = _partial_suffix(self._held, OPEN)
                    out, self._held = self._held[:len(self._held) - keep], self._held[len(self._held) - keep:]
                    if out:
                        events.append(("text", out))
                    return events
                if self._held[:start]:
                    events.append(("text", self._held[:start]))
                self._held, self._in_block = self._held[start:], True
            end = self._held.find(CLOSE)
            if end < 0:
                return events
            block, self._held = self._held[:end + len(CLOSE)], self._held[end + len(CLOSE):]
            self._in_block = False
            call = parse_call(block[len(OPEN):-len(CLOSE)].strip(), self.names)
            if call is None:
                events.append(("text", block))
            else:
                self.calls.append(call)
                events.append(("call", call))

    def finish(self) -> list[tuple[str, object]]:
        """The end of the reply: whatever is held (an unfinished block too) is text."""
        held, self._held, self._in_block = self._held, "", False
        return [("text", held)] if held else []


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that is a beginning of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def split_reply(text: str, names: set[str]) -> tuple[str, list[ToolCall]]:
    """A whole reply as (its text outside calls, stripped; its calls)."""
    parser = ToolCallParser(names)
    events = parser.feed(text) + parser.finish()
    return "".join(str(v) for k, v in events if k == "text").strip(), parser.calls


def template_messages(messages: list[dict]) -> list[dict]:
    """OpenAI's assistant `tool_calls` (arguments as JSON strings) as chat templates render
    them (arguments as objects); everything else as it is."""
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if calls:
            m = {**m, "tool_calls": [{"type": "function", "function": {
                "name": c["function"]["name"],
                "arguments": _arguments(c["function"].get("arguments"))}} for c in calls]}
        out.append(m)
    return out


def _arguments(value) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            return {"value": value}
    return value if isinstance(value, dict) else {"value": value}
