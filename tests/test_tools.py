"""Tool calls and constrained decoding, below the HTTP layer: the <tool_call> parser, the
grammar's hold on a random model, log-probabilities, and tools in the prompt."""

from __future__ import annotations

import json

import jsonschema
import pytest

from qwen_chat.engine import prompt
from qwen_chat.engine.local import Engine
from qwen_chat.engine.reply import Sampling, json_spec, tools_spec
from qwen_chat.errors import GrammarError
from qwen_chat.openai_tools import ToolCallParser, split_reply, template_messages

WEATHER = {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "days": {"type": "integer",
                                                                        "minimum": 1, "maximum": 7}},
    "required": ["city", "days"], "additionalProperties": False}}
ADD = {"name": "add", "parameters": {"type": "object", "properties": {
    "a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}
NAMES = {"get_weather", "add"}


def test_a_reply_splits_into_text_and_calls():
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
            '"days": 2}}\n</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}'
            '\n</tool_call>')
    content, calls = split_reply(text, NAMES)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "days": 2}), ("add", {"a": 1, "b": 2})]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)


@pytest.mark.parametrize("block", [
    '{"name": "nope", "arguments": {}}',  # not one of the tools
    '{"name": "add", "arguments": [1, 2]}',  # arguments not an object
    '{"name": "add", "arguments": {"a": 1',  # broken JSON
    'just words'])
def test_a_malformed_call_comes_back_as_text(block):
    text = f"Sure.<tool_call>\n{block}\n</tool_call>"
    content, calls = split_reply(text, NAMES)
    assert calls == [] and content == text


def test_streamed_a_character_at_a_time_the_same_events_come():
    text = ('Hi <tool_ca and more <tool_call>\n{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}'
            '\n</tool_call> bye <tool_call>\n{"name"')
    parser = ToolCallParser(NAMES)
    events = [e for ch in text for e in parser.feed(ch)] + parser.finish()
    texts = "".join(v for k, v in events if k == "text")
    assert texts == 'Hi <tool_ca and more  bye <tool_call>\n{"name"'
    (call,) = [v for k, v in events if k == "call"]
    assert call.name == "add" and json.loads(call.arguments) == {"a": 1, "b": 2}
    # nothing of a call is handed out as text before the block is known
    assert not any("<tool_call>" in v and "add" in v for k, v in events if k == "text")


def test_openai_tool_calls_in_the_history_become_template_objects():
    messages = template_messages([{"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]}])
    assert messages[0]["tool_calls"][0]["function"]["arguments"] == {"a": 1, "b": 2}


def test_tools_reach_a_template_that_does_not_know_them(tiny_model):
    _, tok = tiny_model
    assert "tools" not in tok.chat_template
    tools = [{"type": "function", "function": WEATHER}]
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"type": "function", "function": {"name": "get_weather",
                                                     "arguments": {"city": "Paris", "days": 1}}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}]
    text = tok.decode(prompt.prompt_ids(tok, history, tools))
    assert '"name": "get_weather"' in text and "<tools>" in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}\n</tool_call>' in text
    assert '<tool_response>\n{"temp": 21}\n</tool_response>' in text
    assert text.endswith("<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def engine(tiny_model):
    model, tok = tiny_model
    return Engine(model, tok)


def reply(engine, sampling: Sampling, tools=None):
    messages = [{"role": "user", "content": "Answer in JSON, please."}]
    generation = engine.generate(messages, sampling, tools=tools)
    return "".join(generation), generation


SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]},
                                      "ok": {"type": "boolean"}}, "required": ["colour", "ok"],
     "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "integer"},
                                               "minItems": 1, "maxItems": 3}},
     "required": ["tags"], "additionalProperties": False},
]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("seed", [0, 1])
def test_a_random_model_held_to_a_schema_writes_valid_json(engine, schema, seed):
    """The tiny random model would write noise; the grammar leaves it only valid output. (Its
    open-ended parts, strings and extra keys, are bounded here: a random model fills them until
    max_tokens, and a reply cut there ends with finish_reason "length", as OpenAI's does.)"""
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=200, seed=seed,
                        grammar=json_spec(schema))
    text, generation = reply(engine, sampling)
    jsonschema.validate(json.loads(text), schema)
    assert generation.finish_reason == "stop"


def test_a_required_call_is_a_valid_call(engine):
    tools = [{"type": "function", "function": f} for f in (WEATHER, ADD)]
    for seed in range(3):
        sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=200, seed=seed,
                            grammar=tools_spec([WEATHER, ADD], parallel=False))
        text, _ = reply(engine, sampling, tools)
        content, calls = split_reply(text, NAMES)
        assert content == "" and len(calls) == 1, text
        schema = {"get_weather": WEATHER, "add": ADD}[calls[0].name]["parameters"]
        jsonschema.validate(json.loads(calls[0].arguments), schema)


def test_a_schema_that_cannot_compile_is_refused_before_anything_runs(engine):
    bad = Sampling(grammar=json_spec({"type": "object", "properties": {"a": {"type": "nope"}}}))
    with pytest.raises(GrammarError) as err:
        engine.generate([{"role": "user", "content": "x"}], bad)
    assert "nope" in str(err.value)  # the message names what is wrong
    assert engine.waiting == 0


def test_log_probabilities_come_with_each_token(engine):
    sampling = Sampling(temperature=0, max_new_tokens=6, logprobs=3)
    text, generation = reply(engine, sampling)
    entries = generation.logprobs
    assert [e.token for e in entries] == generation.tokens
    for e in entries:
        assert len(e.top) == 3 and e.top[0][0] == e.token  # greedy: the chosen is the likeliest
        assert e.logprob <= 0 and abs(e.logprob - e.top[0][1]) < 1e-6
        assert [lp for _, lp in e.top] == sorted((lp for _, lp in e.top), reverse=True)
    assert b"".join(engine.token_bytes(generation.token_ids)).decode("utf-8", "replace").startswith(text[:1])
