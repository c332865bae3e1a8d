"""The OpenAI-compatible API (/v1) of the real app, driven by the official `openai` package."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from tests.server import app_servers  # noqa: F401 - a fixture

KEY = "sk-local-test-key"
FRANCE = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "What is the capital of France?"}]


def client(server, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "v1", api_key=key, max_retries=0, timeout=120)


def post(server, body: bytes, path: str = "v1/chat/completions") -> tuple[int, dict]:
    request = urllib.request.Request(server.url + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_real_question_streamed_and_not_with_usage(app_servers, gguf_path):
    server = app_servers(model=gguf_path, extra_config={"temperature": 0.0})
    api = client(server)
    [model] = api.models.list().data
    assert model.id == gguf_path.name and model.object == "model"

    reply = api.chat.completions.create(model=model.id, messages=FRANCE, max_tokens=24,
                                        temperature=0)
    text = reply.choices[0].message.content
    assert "Paris" in text and reply.choices[0].message.role == "assistant"
    assert reply.object == "chat.completion" and reply.model == model.id
    assert reply.choices[0].finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    chunks = list(api.chat.completions.create(model=model.id, messages=FRANCE, max_tokens=24,
                                              temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy: the same words, piece by piece
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == reply.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == usage.completion_tokens
    assert len({c.id for c in chunks}) == 1

    # A stop string ends the reply before it: OpenAI's `stop`.
    cut = api.chat.completions.create(model=model.id, messages=FRANCE, max_tokens=24,
                                      temperature=0, stop=["Paris"])
    assert cut.choices[0].message.content == text[:text.index("Paris")]
    assert cut.choices[0].finish_reason == "stop"


def test_errors_are_openai_error_objects(app_servers, tiny_dir):
    server = app_servers(model=tiny_dir)
    api = client(server)
    with pytest.raises(openai.NotFoundError) as err:
        api.chat.completions.create(model="gpt-4o", messages=FRANCE)
    assert err.value.code == "model_not_found" and "tiny" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(model=tiny_dir.name, messages=[])
    assert err.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(model=tiny_dir.name, messages=FRANCE, temperature=7)
    assert err.value.param == "temperature" and "0 to 2" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(model=tiny_dir.name,
                                    messages=[{"role": "user", "content": "长" * 40_000}])
    assert err.value.code == "context_length_exceeded"
    status, body = post(server, b'{"model": "x", "messages": [')  # not JSON
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert "JSON" in body["error"]["message"]
    status, body = post(server, json.dumps({"messages": FRANCE}).encode())  # no model
    assert status == 400 and body["error"]["param"] == "model"
    status, body = post(server, json.dumps({"model": tiny_dir.name, "messages": [
        {"role": "wizard", "content": "hi"}]}).encode())
    assert status == 400 and body["error"]["param"] == "messages[0]"
    # Nothing of the API is stored: it is stateless, like OpenAI's.
    assert not server.db_path.exists() or "长" not in server.db_path.read_bytes().decode("utf-8", "ignore")


def test_an_api_key_from_config_is_required_when_set(app_servers, tiny_dir):
    server = app_servers(model=tiny_dir, extra_config={"server_api_key": KEY, "max_new_tokens": 8})
    with pytest.raises(openai.AuthenticationError) as err:
        client(server, "wrong-key").models.list()
    assert err.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong-key").chat.completions.create(model=tiny_dir.name, messages=FRANCE)
    reply = client(server, KEY).chat.completions.create(model=tiny_dir.name, messages=FRANCE)
    assert reply.usage.completion_tokens <= 8


def test_a_clients_next_turn_reuses_the_reply_it_was_sent(app_servers, tiny_dir):
    """A client sends each reply back as text. The tiny model's random tokens rarely come back
    as the same ids when that text is tokenized again, so only the ids the app kept from the
    reply let the whole history be reused: usage says how many prompt tokens were cached.
    Two clients taking turns (two agents, an editor and a script) each keep their cache: the
    one whose prompt the new one continues is found by its token ids."""
    server = app_servers(model=tiny_dir)
    api = client(server)
    histories = {name: [{"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": f"Tell me a story about {name}."}]
                 for name in ("a dragon", "the sea")}
    reused = {}
    for turn in range(3):
        for name, history in histories.items():
            chunks = list(api.chat.completions.create(
                model=tiny_dir.name, messages=history, max_tokens=16, temperature=0.8,
                stream=True, stream_options={"include_usage": True}))
            usage = chunks[-1].usage
            if turn:  # all but the new user message was cached: its last prompt and reply
                assert usage.prompt_tokens_details.cached_tokens >= reused[name], (name, usage)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            reused[name] = usage.prompt_tokens + usage.completion_tokens - 1  # last: not fed
            history += [{"role": "assistant", "content": text},
                        {"role": "user", "content": f"And then, part {turn + 2}?"}]
    # A retry (the last prompt again, without the reply it got) branches off the cache: it is
    # copied, so the prompt is all cached, and the next turn of the sea still finds its own.
    dragon = histories["a dragon"][:-2]
    again = api.chat.completions.create(model=tiny_dir.name, messages=dragon, max_tokens=4)
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    sea = api.chat.completions.create(model=tiny_dir.name, messages=histories["the sea"],
                                      max_tokens=4)
    assert sea.usage.prompt_tokens_details.cached_tokens >= reused["the sea"]


TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The weather.",
                                         "parameters": {"type": "object", "properties": {
                                             "city": {"type": "string"}}}}}


def test_no_parameter_is_silently_ignored(app_servers, tiny_dir):
    """A parameter that is not served is a 400 naming it, through the official client, and so
    is a served one with a value it cannot take: a client is told, instead of getting free text.
    Parameters that are not served are accepted with a value that asks for nothing."""
    server = app_servers(model=tiny_dir, extra_config={"max_new_tokens": 4})
    api = client(server)
    refused = [dict(logit_bias={"12": 5}), dict(store=True), dict(extra_body={"mirostat": 2}),
               dict(extra_body={"functions": [TOOL["function"]]}),
               dict(extra_body={"function_call": "auto"})]
    for options in refused:
        with pytest.raises(openai.BadRequestError) as err:
            api.chat.completions.create(model=tiny_dir.name, messages=FRANCE, **options)
        name = next(iter(options.get("extra_body") or options))
        assert err.value.param == name and err.value.code == "unsupported_parameter", options
        assert f"'{name}'" in err.value.message
    invalid = [(dict(tool_choice="required"), "tool_choice"),
               (dict(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "nope"}}),
                "tool_choice"),
               (dict(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools[0]"),
               (dict(top_logprobs=3), "top_logprobs"), (dict(logprobs=True, top_logprobs=21), "top_logprobs"),
               (dict(response_format={"type": "xml"}), "response_format"),
               (dict(tools=[TOOL], response_format={"type": "json_object"}), "response_format"),
               (dict(response_format={"type": "json_schema", "json_schema": {
                   "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}),
                "response_format"),
               (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {
                   "type": "object", "properties": {"a": {"type": "nonsense"}}}}}], tool_choice="required"),
                "tools")]
    for options, param in invalid:
        with pytest.raises(openai.BadRequestError) as err:
            api.chat.completions.create(model=tiny_dir.name, messages=FRANCE, **options)
        assert err.value.param == param, (options, err.value.message)
    for options in (dict(tools=[]), dict(logprobs=False), dict(response_format={"type": "text"}),
                    dict(store=False, metadata={"a": "b"}), dict(parallel_tool_calls=True),
                    dict(user="someone"), dict(n=1), dict(tools=[TOOL], tool_choice="none")):
        reply = api.chat.completions.create(model=tiny_dir.name, messages=FRANCE, **options)
        assert reply.choices[0].finish_reason in ("stop", "length"), options
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(model=tiny_dir.name, messages=FRANCE, frequency_penalty=3)
    assert err.value.param == "frequency_penalty"
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(model=tiny_dir.name, messages=FRANCE, seed=1.5)
    assert err.value.param == "seed"


def test_seed_and_penalties_change_the_reply_as_openai_defines_them(app_servers, tiny_dir):
    server = app_servers(model=tiny_dir, extra_config={"repetition_penalty": 1.0})
    api = client(server)

    def text(**options) -> str:
        reply = api.chat.completions.create(model=tiny_dir.name, messages=FRANCE,
                                            max_tokens=12, **options)
        return reply.choices[0].message.content

    # The same seed gives the same sampled reply; other seeds give others.
    assert text(temperature=1.0, seed=7) == text(temperature=1.0, seed=7)
    assert len({text(temperature=1.0, seed=s) for s in range(4)}) >= 2
    # Greedy, the random tiny model repeats itself; a frequency penalty makes it move on.
    greedy = text(temperature=0)
    assert greedy == text(temperature=0)
    assert text(temperature=0, frequency_penalty=2.0) != greedy
    assert text(temperature=0, presence_penalty=2.0) != greedy
