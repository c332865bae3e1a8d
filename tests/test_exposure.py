"""Hostile HTTP and exposure: the real app in a subprocess, attacked with crafted requests.

* Listening beyond this computer (host: 0.0.0.0) needs a username and password, or the app
  refuses to start; with them, nothing is served without signing in.
* No file outside the app's own folders can be fetched through Gradio's file routes.
* Malformed requests to every route get a 4xx answer in JSON, never a 500 or a traceback.
"""

from __future__ import annotations

import http.client
import json
import secrets
import sqlite3
import urllib.error
import urllib.request

import pytest
from gradio_client import Client

from tests.server import REPO, app_servers, free_port, run_app  # noqa: F401 - a fixture

USER, PASSWORD = "alice", "correct horse battery"


def request(url: str, *, method: str = "GET", body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, str, str]:
    """(status, content type, body text) for one raw HTTP request; errors are answers too."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            try:
                data = resp.read(200_000)
            except http.client.IncompleteRead as cut:  # an event stream closed by the server
                data = cut.partial
            return resp.status, resp.headers.get("content-type", ""), data.decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type", ""), err.read(200_000).decode(
            "utf-8", "replace")


def test_a_lan_address_without_a_password_refuses_to_start(tmp_path, tiny_dir):
    result = run_app(tmp_path, {"model": str(tiny_dir), "host": "0.0.0.0", "port": free_port()})
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "host: 0.0.0.0" in out and "username and password" in out
    assert "QWEN_CHAT_PASSWORD" in out and "Traceback" not in out


def test_a_lan_address_with_a_password_serves_only_signed_in_users(app_servers, tiny_dir):
    port = free_port("0.0.0.0")
    server = app_servers(model=tiny_dir, port=port,
                         extra_config={"host": "0.0.0.0", "username": USER},
                         env={"QWEN_CHAT_PASSWORD": PASSWORD})  # the password from the environment
    base = f"http://127.0.0.1:{port}"
    # Not signed in: no config, no API description, no queue.
    for path in ("/config", "/gradio_api/info"):
        status, _, body = request(base + path)
        assert status == 401, (path, status, body[:200])
    status, _, _ = request(base + "/gradio_api/call/conversations", method="POST",
                           body=json.dumps({"data": ["x" * 32]}).encode(),
                           headers={"Content-Type": "application/json"})
    assert status == 401
    # The OpenAI-compatible API stays off until a server_api_key is set (sign-in cookies are no use
    # to API clients).
    status, _, body = request(base + "/v1/models")
    assert status == 401 and "server_api_key" in json.loads(body)["error"]["message"]
    # A wrong password is refused; the right one works, for scripts too.
    form = lambda pw: f"username={USER}&password={pw}".encode()  # noqa: E731
    status, _, _ = request(base + "/login", method="POST", body=form("wrong"),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status in (400, 401)
    with pytest.raises(Exception):
        Client(base, auth=(USER, "wrong"), verbose=False)
    client = Client(base, auth=(USER, PASSWORD), verbose=False)
    assert client.predict(secrets.token_hex(16), api_name="/conversations") == []
    assert server.proc is not None and server.proc.poll() is None


def test_no_file_outside_the_app_can_be_fetched(app_servers, tiny_dir):
    server = app_servers(model=tiny_dir)
    client = Client(server.url, verbose=False)
    owner = secrets.token_hex(16)
    client.predict(owner, "", "hello", api_name="/chat")  # the database now holds a message
    secrets_file = server.data_dir / "secret.key"
    assert server.db_path.is_file() and secrets_file.is_file()
    targets = ["/etc/passwd", str(server.db_path), str(secrets_file), str(server.config_path),
               str(REPO / "app.py"), "../../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd"]
    for target in targets:
        for route in ("/gradio_api/file=", "/file=", "/gradio_api/file/"):
            status, _, body = request(server.url.rstrip("/") + route + target)
            assert status in (403, 404, 400), (route, target, status, body[:200])
            assert "root:" not in body and owner not in body


# Event streams of an unknown session or event: Gradio's protocol answers 200 and puts the error,
# as JSON, in the stream's first event. Checked apart from the routes that answer 4xx.
STREAMS = ["/gradio_api/queue/data?session_hash=does-not-exist",
           "/gradio_api/call/chat/not-an-event-id"]
ROUTES = [  # (method, path, body): malformed or missing payloads for every route of the app
    ("POST", "/gradio_api/queue/join", b"{not json"),
    ("POST", "/gradio_api/queue/join", b'{"data": 5}'),
    ("POST", "/gradio_api/queue/join", b'{"fn_index": 99999, "data": [], "session_hash": "x"}'),
    ("GET", "/gradio_api/queue/data", None),
    ("POST", "/gradio_api/call/chat", b"{not json"),
    ("POST", "/gradio_api/call/chat", b'{"data": "not a list"}'),
    ("POST", "/gradio_api/call/chat", b'{"data": [1, 2]}'),
    ("POST", "/gradio_api/call/conversations", b'{"data": [null]}'),
    ("POST", "/gradio_api/call/nope", b'{"data": []}'),
    ("POST", "/gradio_api/run/chat", b"{not json"),
    ("POST", "/gradio_api/cancel", b"{not json"),
    ("POST", "/gradio_api/upload", b"garbage"),
    ("POST", "/gradio_api/component_server", b"{}"),
    ("POST", "/gradio_api/reset", b"{}"),
    ("GET", "/gradio_api/heartbeat/x" * 3, None),
    ("POST", "/login", b""),
    ("POST", "/v1/chat/completions", b"{not json"),
    ("POST", "/v1/chat/completions", b'["a list"]'),
    ("POST", "/v1/chat/completions", b'{"model": 5, "messages": 5}'),
    ("POST", "/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user"}], "stop": 5}'),
    ("GET", "/v1/chat/completions", None),
    ("POST", "/v1/models", b"{}"),
    ("GET", "/v1/nope", None),
    ("GET", "/gradio_api/file=", None),
    ("GET", "/nope", None),
]


def test_malformed_requests_get_a_4xx_json_answer_never_a_500(app_servers, tiny_dir):
    server = app_servers(model=tiny_dir)
    base = server.url.rstrip("/")
    for method, path, body in ROUTES:
        status, kind, text = request(base + path, method=method, body=body,
                                     headers={"Content-Type": "application/json"})
        assert 400 <= status < 500, (method, path, status, text[:300])
        assert "Traceback" not in text and 'File "' not in text, (method, path, text[:300])
        if status != 404 or path.startswith("/gradio_api"):
            assert "json" in kind, (method, path, status, kind, text[:200])
            json.loads(text)
    for path in STREAMS:
        status, kind, text = request(base + path)
        assert status == 200 and "event-stream" in kind, (path, status, kind)
        first = next(line for line in text.splitlines() if line.startswith("data:"))
        assert "Not Found" in json.dumps(json.loads(first[5:])) and "Traceback" not in text
    # A 1 MB message through the API: refused with a clear message, nothing stored.
    with pytest.raises(Exception, match="too long"):
        Client(server.url, verbose=False).predict(secrets.token_hex(16), "", "x" * 1024 * 1024,
                                                  api_name="/chat")
    assert not server.db_path.exists() or not sqlite3.connect(server.db_path).execute(
        "SELECT count(*) FROM messages").fetchone()[0]
    # Still healthy afterwards.
    assert request(server.url)[0] == 200
