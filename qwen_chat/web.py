"""The HTTP server: the Gradio page mounted on a FastAPI app, served by uvicorn.

Serving the app ourselves (rather than `Blocks.launch`) lets us put a guard in front of every
route: a request body that is not valid JSON, or a malformed request that makes a route fail,
gets a 4xx answer in JSON instead of a bare 500; nothing of a traceback reaches the client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
import webbrowser
from typing import Callable

import gradio as gr
import uvicorn
from fastapi import APIRouter, FastAPI

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024  # bytes: far above a message's limit, far below a memory problem
SHUTDOWN_GRACE = 3  # seconds open streams get to end when the app is stopped


def _json_reply(status: int, message: str, path: str = "") -> tuple[dict, dict]:
    error = ({"message": message, "type": "invalid_request_error", "param": None, "code": None}
             if path.startswith("/v1/") else message)  # the OpenAI API's error object there
    body = json.dumps({"error": error}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    return start, {"type": "http.response.body", "body": body}


class RequestGuard:
    """ASGI middleware: 400 for an unparsable JSON body, 413 for a huge one, and 400 (logged)
    instead of a 500 for a request that makes a route fail."""

    def __init__(self, app, api_params: dict[str, int] | None = None):
        self.app = app
        self.api_params = api_params or {}  # named endpoint -> number of string parameters

    def _check_call(self, path: str, payload) -> str | None:
        """What is wrong with a call of a named endpoint (/gradio_api/call|run/<name>), if
        anything: its "data" must be a list of that many strings (Gradio would only say so
        later, in the event stream)."""
        parts = path.rstrip("/").split("/")
        if len(parts) != 4 or parts[1] != "gradio_api" or parts[2] not in ("call", "run"):
            return None
        expected = self.api_params.get(parts[3])
        if expected is None:
            return None
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or len(data) != expected or not all(
                isinstance(v, str) for v in data):
            return f'"data" must be a list of {expected} strings for /{parts[3]}'
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        replay = receive
        if scope["method"] in ("POST", "PUT", "PATCH") and b"json" in headers.get(b"content-type", b""):
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                more = message.get("more_body", False)
                if size > MAX_BODY:
                    return await self._answer(send, 413, f"request body over {MAX_BODY} bytes", path)
            body = b"".join(chunks)
            try:
                payload = json.loads(body) if body else None
            except ValueError:
                return await self._answer(send, 400, "request body is not valid JSON", path)
            problem = self._check_call(path, payload)
            if problem:
                return await self._answer(send, 400, problem)
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()  # then the client's disconnect, if it comes
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

        started = replaced = False

        async def watch(message):
            nonlocal started, replaced
            if replaced:
                return  # the body of a 500 we already answered as a 400
            if message["type"] == "http.response.start":
                started = True
                if message["status"] == 500 and not path.startswith("/v1/"):
                    # a Gradio route failed on what the client sent (/v1 answers its own errors)
                    replaced = True
                    log.warning("A request to %s failed with %s: answered 400",
                                scope.get("path"), message["status"])
                    return await self._answer(send, 400, "malformed request")
            await send(message)

        try:
            await self.app(scope, replay, watch)
        except Exception:  # noqa: BLE001 - answered as a client error; the details are logged
            log.exception("Malformed request to %s", path)
            if not started:
                await self._answer(send, 400, "malformed request", path)

    @staticmethod
    async def _answer(send, status: int, message: str, path: str = "") -> None:
        start, body = _json_reply(status, message, path)
        await send(start)
        await send(body)


class _QuietShutdown(logging.Filter):
    """On stop, open event streams (a browser tab, a script) are cut after SHUTDOWN_GRACE: an
    expected end, not an error worth a traceback in the user's terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, asyncio.CancelledError)
                    or "graceful shutdown exceeded" in record.getMessage())


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None] | None):
        super().__init__(config)
        self._on_stop = on_stop

    def handle_exit(self, sig, frame) -> None:
        logging.getLogger("uvicorn.error").addFilter(_QuietShutdown())
        if self._on_stop is not None and not self.should_exit:
            threading.Thread(target=self._on_stop, daemon=True, name="qwen-chat-stop").start()
        super().handle_exit(sig, frame)


# Gradio's queue looks for new events every 1 ms and for progress every 10 ms, also while nothing
# happens: measured here, a tenth of a core on the main thread, taken from the model's threads
# on a 2-core computer (a reply streamed 10-15% slower). 10 ms and 50 ms: an event waits at most
# 10 ms more to start (a first token takes 100s of ms), and the main thread's share fell to 3-4%.
QUEUE_POLL_S, PROGRESS_POLL_S = 0.01, 0.05


def _poll_less(demo: gr.Blocks) -> None:
    queue = getattr(demo, "_queue", None)
    if queue is not None and hasattr(queue, "sleep_when_free"):
        queue.sleep_when_free = max(queue.sleep_when_free, QUEUE_POLL_S)
        queue.progress_update_sleep_when_free = max(
            getattr(queue, "progress_update_sleep_when_free", 0), PROGRESS_POLL_S)


def serve(demo: gr.Blocks, *, host: str, port: int, auth: tuple[str, str] | None,
          auth_message: str, launch_options: dict, on_ready: Callable[[str], None],
          open_browser: bool, api_params: dict[str, int] | None = None,
          on_stop: Callable[[], None] | None = None, routers: tuple[APIRouter, ...] = (),
          lan=None) -> None:
    """Serve `demo` until the process is asked to stop (Ctrl+C, SIGTERM). `on_ready(url)` runs
    once it answers, with the address to open in a browser. `on_stop` runs first
    thing on that signal (e.g. ends the replies being generated, so their streams close within
    the grace period instead of being cut). `routers` are served beside the page (/v1).
    `lan` (lan.LanListener) is handed the app and the server's loop once it runs, to serve
    paired phones on the local network when asked."""
    _poll_less(demo)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    for router in routers:  # before the page: it is mounted at "/" and would take every path
        app.include_router(router)
    app = gr.mount_gradio_app(app, demo, path="/", auth=auth, auth_message=auth_message,
                              server_name=host, server_port=port, **launch_options)
    app.add_middleware(RequestGuard, api_params=api_params)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=SHUTDOWN_GRACE, lifespan="on")
    server = _Server(config, on_stop)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            if lan is not None and server.servers:
                lan.attach(app, server.servers[0].get_loop())
            on_ready(url)
            if open_browser:
                webbrowser.open(url)

    threading.Thread(target=announce, daemon=True, name="qwen-chat-ready").start()
    # uvicorn handles Ctrl+C and SIGTERM while serving, then raises the signal again with the
    # handlers it found: make those no-ops, so that the caller can save and close afterwards.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run()
