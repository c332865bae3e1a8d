"""A chat completion request of /v1, checked: every parameter served as OpenAI defines it or
refused with OpenAI's error object naming it (400), never accepted and ignored."""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from fastapi.responses import JSONResponse

from . import openai_tools
from .chat import ChatService
from .config import Config
from .engine.contract import Sampling, json_spec, tools_spec
from .engine.reply import flatten_content

ROLES = {"system", "developer", "user", "assistant", "tool"}  # developer = OpenAI's newer name for system
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a function's name, as OpenAI allows it
MAX_TOP_LOGPROBS = 20
# Every parameter of a chat completion is served as OpenAI defines it, or refused with a 400
# that names it: none is accepted and ignored. `user` (an end-user id) changes no reply;
# `repetition_penalty` is not OpenAI's but vLLM's and llama.cpp's (engine: openai sends it).
SERVED = frozenset({"model", "messages", "stream", "stream_options", "n", "stop", "max_tokens",
                    "max_completion_tokens", "temperature", "top_p", "seed", "presence_penalty",
                    "frequency_penalty", "user", "repetition_penalty", "tools", "tool_choice",
                    "parallel_tool_calls", "response_format", "logprobs", "top_logprobs"})
# Parameters not served, accepted only with a value that asks for nothing (clients often send
# the default explicitly).
ASKS_NOTHING = {"functions": ([],), "function_call": ("none",), "logit_bias": ({},),
                "store": (False,)}
# Moot without the parameter they qualify (a stored completion).
QUALIFIERS = {"metadata": "store"}
NOT_YET = {"functions": "the deprecated functions are not served: use tools",
           "function_call": "the deprecated function_call is not served: use tool_choice",
           "logit_bias": "logit_bias is not served", "store": "nothing is stored here"}



class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _number(body: dict, key: str, low: float, high: float, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"Invalid '{key}': expected a number from {low:g} to {high:g}, got "
                            f"{json.dumps(value)}.", param=key)
    return float(value)


def _refuse_unserved(body: dict) -> None:
    """A 400 naming a parameter this app does not serve (see SERVED); a qualifier (e.g.
    parallel_tool_calls) only when what it qualifies is served."""
    for key, value in sorted(body.items(), key=lambda item: item[0] in QUALIFIERS):
        if key in SERVED or value is None or value in ASKS_NOTHING.get(key, ()):
            continue
        qualified = QUALIFIERS.get(key)
        if qualified and body.get(qualified) in (None, *ASKS_NOTHING.get(qualified, ())):
            continue
        why = NOT_YET.get(key) or NOT_YET.get(qualified or "") or "it is not an option of chat completions here"
        raise ApiError(400, f"Unsupported parameter: '{key}' ({why}). The parameters this app "
                            "serves are listed in its README (OpenAI-compatible API).",
                       param=key, code="unsupported_parameter")


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "Missing required parameter: 'messages' (a non-empty list).",
                       param="messages", code="missing_required_parameter")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"Invalid 'messages[{i}]': expected an object with a role of "
                                f"{', '.join(sorted(ROLES))}.", param=f"messages[{i}]")
        content = m.get("content")
        if not isinstance(content, (str, list)) and content is not None:
            raise ApiError(400, f"Invalid 'messages[{i}].content': expected a string or a list of "
                                "text parts.", param=f"messages[{i}].content")
        role = "system" if m["role"] == "developer" else m["role"]
        message = {"role": role, "content": flatten_content(content)}
        if role == "assistant" and m.get("tool_calls"):
            message["tool_calls"] = _tool_calls(m["tool_calls"], f"messages[{i}].tool_calls")
        if role == "tool" and isinstance(m.get("tool_call_id"), str):
            message["tool_call_id"] = m["tool_call_id"]
        out.append(message)
    return openai_tools.template_messages(out)


def _tool_calls(calls: Any, param: str) -> list[dict]:
    ok = isinstance(calls, list) and all(
        isinstance(c, dict) and isinstance(c.get("function"), dict)
        and isinstance(c["function"].get("name"), str)
        and isinstance(c["function"].get("arguments", ""), (str, dict)) for c in calls)
    if not ok:
        raise ApiError(400, f"Invalid '{param}': expected a list of {{'id', 'type': 'function', "
                            "'function': {'name', 'arguments'}}.", param=param)
    return calls


def _tools(body: dict) -> list[dict]:
    """The request's tools as OpenAI defines them ({"type": "function", "function": {...}})."""
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ApiError(400, "Invalid 'tools': expected a list of functions.", param="tools")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict)
                or not isinstance(function.get("name"), str) or not NAME.match(function["name"])
                or not isinstance(function.get("parameters", {}), dict)
                or not isinstance(function.get("description", ""), str)):
            raise ApiError(400, f"Invalid 'tools[{i}]': expected {{'type': 'function', 'function': "
                                "{'name' (letters, digits, _ and -, up to 64), 'description', "
                                "'parameters' (a JSON schema)}}.", param=f"tools[{i}]")
    return tools


def _tool_choice(body: dict, tools: list[dict]) -> str:
    """"none", "auto", "required", or the name of the one function to call."""
    choice = body.get("tool_choice")
    names = {t["function"]["name"] for t in tools}
    if choice is None:
        return "auto" if tools else "none"
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        choice = choice["function"].get("name")
        if choice in names:
            return choice
    elif choice == "none" or (choice in ("auto", "required") and tools):
        return choice
    raise ApiError(400, "Invalid 'tool_choice': expected 'none', 'auto' or 'required' (with tools), "
                        "or {'type': 'function', 'function': {'name': one of the tools}}.",
                   param="tool_choice")


def _response_format(body: dict) -> tuple[str, dict | None]:
    """("text" | "json_object" | "json_schema", the schema)."""
    fmt = body.get("response_format")
    if fmt is None:
        return "text", None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        return kind, None
    spec = fmt.get("json_schema") if kind == "json_schema" else None
    if isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("schema", {}), dict):
        return kind, spec.get("schema") or {"type": "object"}
    raise ApiError(400, "Invalid 'response_format': expected {'type': 'text'}, {'type': 'json_object'} "
                        "or {'type': 'json_schema', 'json_schema': {'name', 'schema', 'strict'}}.",
                   param="response_format")


def _logprobs(body: dict) -> int | None:
    """None (not asked), or how many alternatives per token (0-20)."""
    wanted, top = body.get("logprobs"), body.get("top_logprobs")
    if wanted not in (None, True, False):
        raise ApiError(400, "Invalid 'logprobs': expected true or false.", param="logprobs")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int)
                            or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise ApiError(400, f"Invalid 'top_logprobs': expected a whole number from 0 to "
                            f"{MAX_TOP_LOGPROBS}.", param="top_logprobs")
    if top and not wanted:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
    return (top or 0) if wanted else None


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
        raise ApiError(400, "Invalid 'stop': expected a string or a list of up to 4 strings.",
                       param="stop")
    return stops


class ChatRequest:
    """A validated chat completion request, under `config`: config.yaml as read once for it."""

    def __init__(self, body: Any, service: ChatService, model_id: str, config: Config,
                 attach: Callable[[list[dict]], list[dict]]):
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "Missing required parameter: 'model'.", param="model",
                           code="missing_required_parameter")
        if model not in (model_id, config.model):
            raise ApiError(404, f"The model `{model}` does not exist. This app serves "
                                f"`{model_id}` (GET /v1/models).", param="model",
                           code="model_not_found")
        if body.get("n", 1) not in (1, None):
            raise ApiError(400, "Only n = 1 is supported.", param="n")
        _refuse_unserved(body)
        self.messages = attach(_messages(body))  # with the ids of replies the app gave
        self.stops = _stops(body)
        tools = _tools(body)
        self.tool_choice = _tool_choice(body, tools)
        # tool_choice "none": the model is not shown the tools (it cannot call them).
        self.tools = tools if self.tool_choice != "none" else []
        self.tool_names = {t["function"]["name"] for t in self.tools}
        parallel = body.get("parallel_tool_calls", True)
        if not isinstance(parallel, bool):
            raise ApiError(400, "Invalid 'parallel_tool_calls': expected true or false.",
                           param="parallel_tool_calls")
        self.response_format, schema = _response_format(body)
        self.logprobs = _logprobs(body)
        grammar = None
        if self.tool_choice not in ("none", "auto"):  # a call is required: held to the format
            chosen = [t["function"] for t in self.tools
                      if self.tool_choice == "required" or t["function"]["name"] == self.tool_choice]
            grammar = tools_spec([{"name": f["name"], "parameters": f.get("parameters")} for f in chosen],
                                 parallel=parallel and self.tool_choice == "required")
        if self.response_format != "text":
            if self.tools:
                raise ApiError(400, "'response_format' with 'tools' is not served: ask for one of "
                                    "them.", param="response_format")
            grammar = json_spec(schema)
        # What a grammar that fails to compile is blamed on (the two are never asked together).
        self.grammar_param = "tools" if self.tools else "response_format"
        wants = [p for p, on in (("tools", self.tools), ("response_format", grammar and not self.tools),
                                 ("logprobs", self.logprobs is not None)) if on]
        if wants and not getattr(service.engine, "constrained", False):
            raise ApiError(400, f"Unsupported parameter: '{wants[0]}' (served by the local engine, "
                                "not with engine: openai).", param=wants[0],
                           code="unsupported_parameter")
        self.stream = bool(body.get("stream", False))
        options = body.get("stream_options") or {}
        self.include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        budget = service.input_budget(config)
        self.prompt_tokens = service.engine.count_tokens(self.messages, self.tools or None)
        if self.prompt_tokens > budget:
            raise ApiError(400, f"This model's maximum context length is {budget} tokens "
                                f"(max_input_tokens). However, your messages resulted in "
                                f"{self.prompt_tokens} tokens.", param="messages",
                           code="context_length_exceeded")
        room = max(1, service.engine.context_length - self.prompt_tokens)
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        if body.get(key) is not None and not isinstance(body[key], int):
            raise ApiError(400, f"Invalid '{key}': expected a whole number.", param=key)
        self.sampling = Sampling(
            temperature=_number(body, "temperature", 0, 2, config.temperature),
            top_p=max(0.01, _number(body, "top_p", 0, 1, config.top_p)),
            max_new_tokens=int(_number(body, key, 1, room, min(config.max_new_tokens, room))),
            repetition_penalty=_number(body, "repetition_penalty", 1, 2,
                                       config.repetition_penalty),
            presence_penalty=_number(body, "presence_penalty", -2, 2, 0.0),
            frequency_penalty=_number(body, "frequency_penalty", -2, 2, 0.0),
            seed=_seed(body), grammar=grammar, logprobs=self.logprobs)


def _seed(body: dict) -> int | None:
    seed = body.get("seed")
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not -2**63 <= seed < 2**64:
        raise ApiError(400, f"Invalid 'seed': expected a whole number, got {json.dumps(seed)}.",
                       param="seed")
    return seed % 2**63  # torch.Generator takes a non-negative 64-bit seed
