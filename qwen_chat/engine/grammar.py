"""Constrained decoding: each next token limited to what a grammar allows (llguidance).

/v1 asks for JSON (`response_format`) or a tool call (`tool_choice: required` or a named
function); rather than hope the model complies, every step's logits outside the grammar's
allowed tokens are set to -inf before sampling, so the reply always parses. The grammar
follows the tokens sampled, and once it is complete only the end of the reply is allowed.

Why llguidance: maintained (the structured-output backend of vLLM, SGLang and llama.cpp), no
dependencies (xgrammar pulls triton, a GPU compiler, on Linux), and measured here on Qwen2.5's
151,936-token vocabulary: a token's mask in 14-140 us after 1.4 ms for the first, beside a
decode step of about 25 ms (bench/grammar.py). Its own torch helper compiles a kernel at run
time (torch.compile needs a C++ compiler), so the mask is applied here with numpy's unpackbits.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import torch

from ..errors import GrammarError

# JSON as models write it (Python's json.dumps separators); no free whitespace, so a model
# cannot drift into padding its output with blanks until it runs out of tokens.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def json_grammar(schema: dict | None) -> str:
    """Output that is one JSON value of `schema` (None: any JSON object)."""
    from llguidance import LLMatcher

    try:
        return LLMatcher.grammar_from_json_schema(schema or {"type": "object"}, defaults=JSON_OPTIONS)
    except ValueError as exc:
        raise GrammarError(f"not a usable JSON schema: {exc}") from None


def tool_call_grammar(tokenizer, tools: list[dict], *, parallel: bool = True) -> str:
    """Output that is one (or, with `parallel`, several) of the model's tool-call blocks, in the
    format Qwen2.5's template teaches: <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>,
    the name one of `tools` ({"name", "parameters"}) and the arguments valid for it."""
    from llguidance import LLMatcher

    calls = [{"type": "object", "properties": {"name": {"const": t["name"]},
                                               "arguments": t.get("parameters") or {"type": "object"}},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    json_rule = json.dumps(schema, ensure_ascii=False)
    options = json.dumps(JSON_OPTIONS)
    open_tag, close_tag = (_special(tokenizer, t) for t in ("<tool_call>", "</tool_call>"))
    repeat = ' ("\\n" block)*' if parallel else ""
    lark = (f"start: block{repeat}\n"
            f'block: {open_tag} "\\n" call "\\n" {close_tag}\n'
            f'call: %json {{ "x-guidance": {options}, {json_rule[1:]}\n')
    return LLMatcher.grammar_from_lark(lark)


def _special(tokenizer, text: str) -> str:
    """`text` in a Lark rule: the token itself where the tokenizer has it as one (Qwen's
    <tool_call> is), else the characters."""
    token = tokenizer.convert_tokens_to_ids(text)
    if isinstance(token, int) and token != tokenizer.unk_token_id:
        return f"<[{token}]>"
    return json.dumps(text)


class Grammars:
    """The tokenizer as llguidance needs it (about a second to build: made at the first
    constrained reply and kept), and the checks and matchers made with it."""

    def __init__(self, tokenizer, vocab_size: int) -> None:
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._info = None
        self._lock = threading.Lock()

    @property
    def info(self):
        with self._lock:
            if self._info is None:
                import llguidance.hf

                self._info = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab_size)
            return self._info

    def constraint(self, spec: str) -> "Constraint":
        """A reply's constraint from its Sampling.grammar (json_spec or tools_spec); raises
        GrammarError if it cannot be compiled (compiled once: the matcher says what is wrong)."""
        return Constraint(self.info, self.compile(spec), self.vocab_size)

    def compile(self, spec: str) -> str:
        data = json.loads(spec)
        if "tools" in data:
            return tool_call_grammar(self.tokenizer, data["tools"], parallel=data["parallel"])
        return json_grammar(data["json_schema"])


class Constraint:
    """One reply's place in its grammar."""

    def __init__(self, info, grammar: str, vocab_size: int) -> None:
        from llguidance import LLMatcher

        self.matcher = LLMatcher(info, grammar)
        self.vocab_size = vocab_size
        if self.matcher.is_error():
            raise GrammarError(self.matcher.get_error())

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits of tokens the grammar does not allow next to -inf (in place)."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[:logits.shape[-1]].astype(bool)
        if allowed.any():  # an error state allows nothing: leave the choice to the model
            logits.masked_fill_(torch.from_numpy(~allowed), float("-inf"))

    def advance(self, token: int) -> None:
        self.matcher.consume_token(token)

