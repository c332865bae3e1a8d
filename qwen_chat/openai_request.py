"""A chat completion request of /v1, checked: every parameter served as OpenAI defines it or
refused with OpenAI's error object naming it (400), never accepted and ignored."""

from __future__ import annotations

import json
from typing import Any, Callable

from fastapi.responses import JSONResponse

from .chat import ChatService
from .config import Config
from .engine.contract import Sampling
from .engine.reply import flatten_content

ROLES = {"system", "developer", "user", "assistant"}  # developer = OpenAI's newer name for system
# Every parameter of a chat completion is served as OpenAI defines it, or refused with a 400
# that names it: none is accepted and ignored. `user` (an end-user id) changes no reply;
# `repetition_penalty` is not OpenAI's but vLLM's and llama.cpp's (engine: openai sends it).
SERVED = frozenset({"model", "messages", "stream", "stream_options", "n", "stop", "max_tokens",
                    "max_completion_tokens", "temperature", "top_p", "seed", "presence_penalty",
                    "frequency_penalty", "user", "repetition_penalty"})
# Parameters not served, accepted only with a value that asks for nothing (clients often send
# the default explicitly): e.g. no tools, logprobs false, plain text.
ASKS_NOTHING = {"tools": ([],), "tool_choice": ("none",), "functions": ([],),
                "function_call": ("none",), "logprobs": (False,), "top_logprobs": (0,),
                "response_format": ({"type": "text"},), "logit_bias": ({},), "store": (False,)}
# Moot without the parameter they qualify (tools, a stored completion).
QUALIFIERS = {"parallel_tool_calls": "tools", "metadata": "store"}
NOT_YET = {"tools": "tool calls are not served yet", "tool_choice": "tool calls are not served yet",
           "functions": "function calls are not served yet",
           "function_call": "function calls are not served yet",
           "response_format": "only plain text is served (JSON mode is not)",
           "logprobs": "log-probabilities are not served",
           "top_logprobs": "log-probabilities are not served",
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
        out.append({"role": role, "content": flatten_content(content)})
    return out


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
        self.stream = bool(body.get("stream", False))
        options = body.get("stream_options") or {}
        self.include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        budget = service.input_budget(config)
        self.prompt_tokens = service.engine.count_tokens(self.messages)
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
            seed=_seed(body))


def _seed(body: dict) -> int | None:
    seed = body.get("seed")
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not -2**63 <= seed < 2**64:
        raise ApiError(400, f"Invalid 'seed': expected a whole number, got {json.dumps(seed)}.",
                       param="seed")
    return seed % 2**63  # torch.Generator takes a non-negative 64-bit seed
