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


def template(tokenizer, messages: list[dict]) -> str:
    """The chat template's text for `messages`, ending where the assistant's reply starts."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The templated prompt's token ids; replies with valid `token_ids` keep them."""
    plain = [{"role": m["role"], "content": flatten_content(m["content"])} for m in messages]
    text = template(tokenizer, plain)
    exact = {i: m["token_ids"] for i, m in enumerate(messages) if m.get("token_ids")
             and tokenizer.decode(m["token_ids"], skip_special_tokens=True) == plain[i]["content"]}
    spliced = _splice(tokenizer, plain, exact, text) if exact else None
    return spliced if spliced is not None else _ids(tokenizer, text)


def _splice(tokenizer, plain: list[dict], exact: dict[int, list[int]],
            text: str) -> list[int] | None:
    """The prompt's ids with `exact` messages' ids in place of their text: the template is
    rendered with a marker for each such message, the text between markers tokenized, and the
    ids put between. None when the template does not place each content verbatim."""
    marks = {i: f"{_OPEN}{i}{_CLOSE}" for i in exact}
    rest = template(tokenizer, [{**m, "content": marks[i]} if i in marks else m
                                for i, m in enumerate(plain)])
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

    def ids(self, messages: list[dict]) -> list[int]:
        key = json.dumps(messages, ensure_ascii=False, sort_keys=True, default=str)
        with self._lock:
            found = self._ids.get(key)
        if found is not None:
            return found
        ids = prompt_ids(self.tokenizer, messages)
        with self._lock:
            self._ids[key] = ids
            while len(self._ids) > self.size:
                self._ids.popitem(last=False)
        return ids
