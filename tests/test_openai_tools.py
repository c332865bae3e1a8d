"""/v1 as agents and editor plug-ins use it, against the running app with a real small model
(SmolLM2-135M-Instruct): tool calls with the official `openai` client (a loop of two tool
rounds, streamed and not), JSON output held to a schema, log-probabilities, and LangChain's
ChatOpenAI (bind_tools, with_structured_output). The small model may answer badly: these check
the protocol and the constraint, not its wisdom."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.server import AppServer

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather forecast for a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city's name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def server(tmp_path_factory, gguf_path, model_cache):
    app = AppServer(tmp_path_factory.mktemp("tools"), model=gguf_path,
                    extra_config={"max_new_tokens": 96, "temperature": 0.0})
    app.start()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def api(server):
    return openai.OpenAI(base_url=server.url + "v1", api_key="none", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def model_id(api):
    return api.models.list().data[0].id


def valid_calls(calls) -> list:
    assert calls, "no tool call"
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert len({c.id for c in calls}) == len(calls)
    return calls


def streamed(api, **request):
    """A streamed request put back together as the official client's users do: content pieces
    joined, tool-call deltas merged by index."""
    content, calls, finish = "", {}, None
    for chunk in api.chat.completions.create(stream=True, **request):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for d in delta.tool_calls or []:
            call = calls.setdefault(d.index, {"id": d.id, "name": "", "arguments": ""})
            call["id"] = d.id or call["id"]
            call["name"] += d.function.name or ""
            call["arguments"] += d.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("stream", [False, True])
def test_an_agent_loop_of_two_tool_rounds(api, model_id, stream):
    """Round 1 must call a tool, round 2 must call `add`, then the model answers in words;
    each result goes back as a `tool` message and the history is rendered for the model."""
    messages = [{"role": "system", "content": "You are a helpful assistant with tools."},
                {"role": "user", "content": "What is the weather in Paris in celsius? "
                                            "Then add 2 and 3."}]
    for choice in ("required", {"type": "function", "function": {"name": "add"}}):
        request = dict(model=model_id, messages=messages, tools=TOOLS, tool_choice=choice)
        if stream:
            content, raw, finish = streamed(api, **request)
            assert finish == "tool_calls"
            for call in raw:
                assert call["id"].startswith("call_")
                jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
            calls = [{"id": c["id"], "type": "function",
                      "function": {"name": c["name"], "arguments": c["arguments"]}} for c in raw]
            names = [c["name"] for c in raw]
        else:
            reply = api.chat.completions.create(**request)
            assert reply.choices[0].finish_reason == "tool_calls"
            message = reply.choices[0].message
            valid_calls(message.tool_calls)
            calls = [c.model_dump() for c in message.tool_calls]
            names = [c.function.name for c in message.tool_calls]
        if isinstance(choice, dict):
            assert set(names) == {"add"}
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        for call in calls:
            result = {"temperature": 21} if call["function"]["name"] == "get_weather" else {"sum": 5}
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)})
    final = api.chat.completions.create(model=model_id, messages=messages, tools=TOOLS,
                                        tool_choice="none", max_tokens=40)
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content and final.choices[0].finish_reason in ("stop", "length")
    assert final.usage.prompt_tokens > 100  # the tools' results were part of what it read


def test_auto_lets_the_model_choose_and_its_text_stays_text(api, model_id):
    reply = api.chat.completions.create(model=model_id, tools=TOOLS, tool_choice="auto",
                                        messages=[{"role": "user", "content": "Say hello."}])
    choice = reply.choices[0]
    if choice.message.tool_calls:  # the model may call; if it does, the call is valid
        valid_calls(choice.message.tool_calls)
        assert choice.finish_reason == "tool_calls"
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")


SCHEMA_CASES = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"capital": {"type": "string"},
                                      "continent": {"enum": ["Europe", "Asia", "Africa", "America"]}},
     "required": ["capital", "continent"], "additionalProperties": False},
    {"type": "object", "properties": {"colours": {"type": "array", "items": {"type": "string"},
                                                  "minItems": 2, "maxItems": 3}},
     "required": ["colours"], "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "score": {"type": "number",
                                                                          "minimum": 0, "maximum": 10}},
     "required": ["ok", "score"], "additionalProperties": False},
]
QUESTIONS = ["Describe a person called Ann who is 30.", "What is the capital of France?",
             "Name some colours of the rainbow.", "Rate pizza from 0 to 10."]


@pytest.mark.parametrize("case", range(len(SCHEMA_CASES)))
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_always_validates(api, model_id, case, stream):
    schema = SCHEMA_CASES[case]
    request = dict(model=model_id, messages=[{"role": "user", "content": QUESTIONS[case]}],
                   response_format={"type": "json_schema", "json_schema": {
                       "name": "answer", "schema": schema, "strict": True}})
    if stream:
        text, _, finish = streamed(api, **request)
    else:
        reply = api.chat.completions.create(**request)
        text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), schema)


def test_json_object_and_the_clients_parse_helper(api, model_id):
    from pydantic import BaseModel

    reply = api.chat.completions.create(
        model=model_id, response_format={"type": "json_object"}, max_tokens=300,
        messages=[{"role": "user", "content": "Ann is 30. Her name and age as JSON, please."}])
    assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
    assert isinstance(json.loads(reply.choices[0].message.content), dict)

    class City(BaseModel):
        name: str
        country: str

    parsed = api.chat.completions.parse(model=model_id, response_format=City,
                                        messages=[{"role": "user", "content": "Paris?"}])
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City) and isinstance(city.name, str)


@pytest.mark.parametrize("stream", [False, True])
def test_log_probabilities(api, model_id, stream):
    request = dict(model=model_id, messages=[{"role": "user", "content": "What is 2 + 2?"}],
                   logprobs=True, top_logprobs=2, max_tokens=8)
    if stream:
        entries, text = [], ""
        for chunk in api.chat.completions.create(stream=True, **request):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                if chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
                    entries += chunk.choices[0].logprobs.content
    else:
        reply = api.chat.completions.create(**request)
        entries, text = reply.choices[0].logprobs.content, reply.choices[0].message.content
    assert entries and all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in entries)
    assert all(e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob for e in entries)
    # greedy (temperature 0 in config.yaml): each token is the likeliest there
    assert all(e.token == e.top_logprobs[0].token for e in entries)
    assert bytes(b for e in entries for b in e.bytes).decode("utf-8", "replace").startswith(text.strip()[:3])


def test_langchain_binds_tools_and_structures_output(server, model_id):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    llm = ChatOpenAI(base_url=server.url + "v1", api_key="none", model=model_id, temperature=0,
                     max_retries=0, timeout=300)

    def get_weather(city: str, unit: str) -> str:
        """The weather forecast for a city (unit: celsius or fahrenheit)."""
        return "21 degrees"

    with_tools = llm.bind_tools([get_weather], tool_choice="get_weather")
    question = HumanMessage("What is the weather in Paris?")
    ai = with_tools.invoke([question])
    (call,) = ai.tool_calls[:1]
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str)
    answer = llm.invoke([question, ai, ToolMessage("21 degrees", tool_call_id=call["id"])])
    assert isinstance(answer.content, str) and answer.content

    class Capital(BaseModel):
        city: str = Field(description="the capital city")
        country: str

    for method in ("json_schema", "function_calling"):
        result = llm.with_structured_output(Capital, method=method).invoke("The capital of France?")
        assert isinstance(result, Capital) and isinstance(result.city, str), method
