"""An OpenAI-compatible API on the app's own port: GET /v1/models, POST /v1/chat/completions.

Any OpenAI client (the `openai` package, editors, agents) can use the local model:
`base_url="http://127.0.0.1:8080/v1"`. Replies go through the same engine and queue as the page
(they are batched with the page's replies); like OpenAI's API it is stateless: the client sends
the whole conversation and nothing is stored. Errors are OpenAI's error objects, e.g.
`{"error": {"message": ..., "type": "invalid_request_error", "param": "model", "code": ...}}`.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from .chat import ChatService, wait_for_model
from .errors import GenerationError, GrammarError, ModelNotLoaded
from .openai_output import Output
from .openai_request import ApiError, ChatRequest

CREATED = int(time.time())  # the model's "created" time: when this app started
# The API's KV caches: a client's next turn reuses the cache of its previous one, found by its
# prompt (the longest common prefix of token ids), so clients taking turns each keep theirs.
CACHE_FAMILY = "openai-api"
WAIT_INTERVAL = 0.5  # seconds between looks at a model still loading
# A stream sends what came at most every 40 ms (as the page updates): per token, each event
# costs a thread hop here and parsing in the client, CPU the model's threads need on 2 cores.
STREAM_INTERVAL = 0.04
REMEMBERED_REPLIES = 32  # replies whose token ids are kept for their client's next turn
class _Replies:
    """The token ids of the latest replies, by their text. A client sends a reply back as text
    in its next turn; tokenized again, that text often gives other ids than the model generated
    (a "\n\n" generated as two tokens, a character cut between two), and the cached prompt
    would then stop matching there and be computed again. With the ids it was generated as the
    whole history is reused, as the page reuses its stored ones (engine/prompt.py checks that
    they still spell the text). In memory only; nothing is stored."""

    def __init__(self) -> None:
        self._ids: OrderedDict[str, list[int]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, text: str, token_ids: list[int] | None) -> None:
        if text and token_ids:
            with self._lock:
                self._ids[text] = list(token_ids)
                self._ids.move_to_end(text)
                while len(self._ids) > REMEMBERED_REPLIES:
                    self._ids.popitem(last=False)

    def attach(self, messages: list[dict]) -> list[dict]:
        with self._lock:
            return [{**m, "token_ids": self._ids[m["content"]]}
                    if m["role"] == "assistant" and m.get("content") in self._ids else m
                    for m in messages]


async def _model_ready(service: ChatService) -> None:
    """Wait while the model loads (a request sent at start-up is answered when it is ready);
    an ApiError (503) when loading failed."""
    try:
        async for _ in iterate_in_threadpool(wait_for_model(service.engine, WAIT_INTERVAL)):
            pass
    except ModelNotLoaded as exc:
        raise ApiError(503, f"The model could not be loaded: {exc}",
                       kind="server_error", code="model_not_loaded") from exc


def health_router(service: ChatService) -> APIRouter:
    """GET /health, as llama.cpp's server has it: 200 {"status": "ok"} once the model is ready
    (with the kernels, CPU threads, the history disk's free MB and whether a save waits for a
    lock held by another program),
    503 {"status": "loading", "phase", "percent"} while it loads, 503 {"status": "error"} if it
    could not be loaded. For scripts that wait for the app, and for monitoring."""
    api = APIRouter()

    @api.get("/health")
    async def health() -> JSONResponse:
        snapshot = service.loading()
        if snapshot is None:
            info = service.system()
            return JSONResponse({"status": "ok", "precision": info["precision"],
                                 "threads": info["threads"], "disk_free_mb": info["disk_free_mb"],
                                 "history_busy": info["history_busy"]})
        if snapshot.phase == "failed":
            return JSONResponse({"status": "error", "message": "the model could not be loaded: "
                                 "see the app's terminal or page"}, status_code=503)
        return JSONResponse({"status": "loading", "phase": snapshot.phase,
                             "percent": snapshot.percent}, status_code=503)

    return api


def router(service: ChatService, *, model_id: str, api_key: str, key_required: bool,
           queue_size: int) -> APIRouter:
    """The /v1 routes. `key_required`: refuse everything when no api_key is set (the app is
    reachable from other computers)."""
    api = APIRouter(prefix="/v1")
    replies = _Replies()

    def check_key(request: Request) -> None:
        if not api_key:
            if key_required:
                raise ApiError(401, "The API is off: this app listens beyond this computer, so "
                                    "set server_api_key in config.yaml (or QWEN_CHAT_API_KEY).",
                               code="invalid_api_key")
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {api_key}".encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    @api.get("/models")
    async def models(request: Request) -> JSONResponse:
        try:
            check_key(request)
        except ApiError as exc:
            return exc.response()
        return JSONResponse({"object": "list", "data": [
            {"id": model_id, "object": "model", "created": CREATED, "owned_by": "qwen-chat"}]})

    @api.post("/chat/completions")
    async def completions(request: Request):
        try:
            check_key(request)
            try:
                body = json.loads(await request.body())
            except ValueError:
                raise ApiError(400, "We could not parse the JSON body of your request.") from None
            await _model_ready(service)
            req = await run_in_threadpool(ChatRequest, body, service, model_id,
                                          service.config().config, replies.attach)
            if service.engine.waiting >= queue_size:
                raise ApiError(503, "The app is busy (the queue is full). Please try again.",
                               kind="server_error", code="busy")
        except ApiError as exc:
            return exc.response()
        try:
            # Off the event loop: templating, and a grammar compiled for tools or JSON output.
            generation = await run_in_threadpool(service.engine.generate, req.messages, req.sampling,
                                                 cache_family=CACHE_FAMILY, tools=req.tools or None)
        except GrammarError as exc:
            return ApiError(400, f"Invalid '{req.grammar_param}': {exc}",
                            param=req.grammar_param).response()
        output = Output(req, generation, service.engine.token_bytes)
        ident, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        if req.stream:
            return StreamingResponse(_stream(output, ident, created, model_id, replies),
                                     media_type="text/event-stream")
        try:
            await run_in_threadpool(_collect, output)
        except GenerationError as exc:
            return ApiError(500, str(exc), kind="server_error").response()
        finally:
            generation.cancel.set()
        if not output.stopped and not output.calls:
            replies.remember(output.text, generation.token_ids)
        return JSONResponse(output.completion(ident, created, model_id))

    return api


def _collect(output: Output) -> None:
    for piece in output.reply:
        output.events(piece)
        if output.stopped:
            output.reply.close()
            return
    output.finish()


async def _stream(output: Output, ident: str, created: int, model_id: str,
                  replies: _Replies) -> AsyncIterator[str]:
    generation = output.reply
    chunks = output.chunks(generation.batches(STREAM_INTERVAL), ident, created, model_id)
    try:
        async for event in iterate_in_threadpool(chunks):
            yield event
        if not output.stopped and not output.calls:  # the text as generated, not cut at a stop
            replies.remember(output.text, generation.token_ids)
    except GenerationError as exc:
        yield f"data: {json.dumps(ApiError(500, str(exc), kind='server_error').body())}\n\n"
    finally:
        generation.cancel.set()  # the client went away, or a stop string: end the reply
