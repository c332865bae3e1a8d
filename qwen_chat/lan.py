"""The app on the local network, only while phone access is on, only for paired devices.

The app listens on 127.0.0.1 (config.yaml's host). "Use on my phone" (ui/phone.py) starts a
second listener on this computer's local address, same port, serving the same app behind
`DeviceGate`: `/pair?code=...` (what the QR code opens) pairs a device and sets its cookie;
every other request needs the cookie of a device that is paired and not revoked, or it gets a
401 page saying how to pair. Turning phone access off closes that listener.

The second listener runs on the first one's event loop (Gradio's queue lives there), with no
lifespan of its own and no signal handlers: Ctrl+C still stops the app as before.
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
import socket
import threading
from urllib.parse import parse_qs

import uvicorn

from .devices import COOKIE, Devices

log = logging.getLogger(__name__)

COOKIE_AGE = 400 * 24 * 3600  # a year and a bit: a phone stays paired until revoked
PAGE = """<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Qwen Chat</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28em;margin:3em auto;padding:0 1em;
line-height:1.5}}input,button{{font-size:1.2em;padding:.4em}}</style></head><body>
<h2>Qwen Chat</h2><p>{message}</p>
<form method="get" action="/pair"><input name="code" inputmode="numeric" maxlength="6"
placeholder="123456" autocomplete="one-time-code"> <button>Pair</button></form></body></html>"""
NOT_PAIRED = ("This device is not paired with Qwen Chat (or was removed). On the computer, open "
              "Qwen Chat and choose “Use on my phone”, then scan the code or type it here. "
              "此设备尚未配对：请在电脑上打开 Qwen Chat，选择“在手机上使用”，扫描二维码或在此输入配对码。")
WRONG_CODE = ("That code is not valid (it works once, for ten minutes). Show a new one on the "
              "computer: “Use on my phone”. 配对码无效，请在电脑上重新获取。")


def lan_address() -> str | None:
    """This computer's address on its local network (the one its default route leaves from):
    no packet is sent. QWEN_CHAT_LAN_ADDRESS overrides it. None when there is no network."""
    forced = os.environ.get("QWEN_CHAT_LAN_ADDRESS")
    if forced:
        return forced
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.254.254.254", 1))  # any private address: only routing is asked
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def _cookie(scope) -> str | None:
    for name, value in scope.get("headers") or []:
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, token = part.strip().partition("=")
                if key == COOKIE:
                    return token
    return None


class DeviceGate:
    """ASGI middleware of the local-network listener (see the module docstring)."""

    def __init__(self, app, devices: Devices) -> None:
        self.app, self.devices = app, devices

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if scope["type"] == "http" and scope.get("path") == "/pair":
            return await self._pair(scope, send)
        owner = await asyncio.to_thread(self.devices.owner_of, _cookie(scope))
        if owner is None:
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 4401})
            return await self._page(send, 401, NOT_PAIRED)
        return await self.app(scope, receive, send)

    async def _pair(self, scope, send) -> None:
        code = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("code") or [""])[0]
        if not code:
            return await self._page(send, 200, "Type the six-digit code shown on the computer. "
                                               "输入电脑上显示的六位配对码。")
        agent = next((v.decode("latin-1") for k, v in scope.get("headers") or [] if k == b"user-agent"), "")
        token = await asyncio.to_thread(self.devices.pair, code.strip(), agent)
        if token is None:
            return await self._page(send, 403, WRONG_CODE)
        cookie = (f"{COOKIE}={token}; Path=/; Max-Age={COOKIE_AGE}; HttpOnly; SameSite=Strict")
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", b"/"), (b"set-cookie", cookie.encode()),
                                (b"cache-control", b"no-store"), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _page(send, status: int, message: str) -> None:
        body = PAGE.format(message=html.escape(message)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/html; charset=utf-8"),
                                (b"cache-control", b"no-store"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class LanListener:
    """Starts and stops the local-network listener on the main server's loop. `attach` is
    called by web.serve once the main server runs."""

    def __init__(self, devices: Devices) -> None:
        self.devices = devices
        self._app = self._loop = None
        self._server: uvicorn.Server | None = None
        self._future = None
        self._lock = threading.Lock()
        self.url: str | None = None

    def attach(self, app, loop: asyncio.AbstractEventLoop) -> None:
        self._app, self._loop = DeviceGate(app, self.devices), loop

    @property
    def ready(self) -> bool:
        return self._app is not None

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self, port: int) -> str:
        """Listen on the local address too (if not already); returns its URL. OSError when
        there is no local network, or the port is taken there."""
        with self._lock:
            if self._server is not None:
                return self.url
            if self._app is None:
                raise OSError("the app is still starting")
            host = lan_address()
            if host is None:
                raise OSError("this computer is not on a local network")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if os.name != "nt":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
            sock.listen(64)
            sock.setblocking(False)
            config = uvicorn.Config(self._app, lifespan="off", log_level="warning",
                                    timeout_graceful_shutdown=1)
            server = uvicorn.Server(config)
            # _serve: serve() without its signal handlers (the main server keeps Ctrl+C).
            self._future = asyncio.run_coroutine_threadsafe(server._serve(sockets=[sock]), self._loop)
            self._server, self.url = server, f"http://{host}:{port}/"
            log.warning("Phone access on: also listening on %s (paired devices only)", self.url)
            return self.url

    def stop(self, timeout: float = 5.0) -> None:
        """Close the local-network listener (paired devices stay paired, and connect again
        when it is turned back on)."""
        with self._lock:
            server, future = self._server, self._future
            self._server = self._future = self.url = None
        if server is None:
            return
        server.should_exit = True
        try:
            future.result(timeout)
        except Exception:  # noqa: BLE001 - it is closing; a slow stream is cut
            pass
        log.warning("Phone access off: no longer listening on the local network")
