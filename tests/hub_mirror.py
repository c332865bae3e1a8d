"""Local stand-ins for the model hubs, over real HTTP sockets, each serving one folder as one
repository: the Hub routes `huggingface_hub.snapshot_download` uses (HubMirror, for HF_ENDPOINT),
and the ModelScope routes the `modelscope` package uses (ModelScopeMirror, for
MODELSCOPE_ENDPOINT).

Neither hub is reachable from the test machines; users in China point HF_ENDPOINT at a mirror
(hf-mirror.com) that answers these same routes. With these servers as endpoints, the app's real
download code and the real client packages run unchanged: repository info, file list, then each
file, sent at `bytes_per_s` so that a test can watch the download's progress.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


class HubMirror:
    def __init__(self, folder: Path, repo_id: str, *, bytes_per_s: float | None = None):
        self.folder, self.repo_id, self.bytes_per_s = Path(folder), repo_id, bytes_per_s
        self.files = {p.name: p.read_bytes() for p in sorted(self.folder.iterdir()) if p.is_file()}
        self.oids = {name: hashlib.sha1(data).hexdigest() for name, data in self.files.items()}
        self.sha = hashlib.sha1("".join(self.oids.values()).encode()).hexdigest()
        self.requests: list[str] = []  # "METHOD path" of every request, in order
        self.total_bytes = sum(len(d) for d in self.files.values())
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "HubMirror":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: the test reads mirror.requests
                pass

            def _json(self, data) -> None:
                body = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _route(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                mirror.requests.append(f"{self.command} {path}")
                api = f"/api/models/{mirror.repo_id}/"
                resolve = f"/{mirror.repo_id}/resolve/"
                if path.startswith(api + "revision/"):
                    return self._json({"id": mirror.repo_id, "sha": mirror.sha, "private": False,
                                       "siblings": [{"rfilename": n} for n in mirror.files]})
                if path.startswith(api + "tree/"):
                    return self._json([{"type": "file", "path": n, "size": len(d),
                                        "oid": mirror.oids[n]} for n, d in mirror.files.items()])
                if path.startswith(resolve):
                    name = path[len(resolve):].split("/", 1)[-1]
                    if name in mirror.files:
                        return self._file(name, head)
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _file(self, name: str, head: bool) -> None:
                data = mirror.files[name]
                self.send_response(200)
                self.send_header("X-Repo-Commit", mirror.sha)
                self.send_header("ETag", f'"{mirror.oids[name]}"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if head:
                    return
                step = 4096
                for start in range(0, len(data), step):
                    self.wfile.write(data[start:start + step])
                    if mirror.bytes_per_s:
                        time.sleep(step / mirror.bytes_per_s)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._route(head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                self._route(head=True)

        return Handler


class ModelScopeMirror(HubMirror):
    """ModelScope's file listing and file routes (modelscope 1.40 / modelscope_hub 0.5)."""

    def _handler(self):
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                step = 4096
                for start in range(0, len(body), step):
                    self.wfile.write(body[start:start + step])
                    if mirror.bytes_per_s and kind != "application/json":
                        time.sleep(step / mirror.bytes_per_s)

            def do_GET(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                path, query = unquote(url.path), parse_qs(url.query)
                mirror.requests.append(f"{self.command} {path}?{url.query}")
                base = f"/api/v1/models/{mirror.repo_id}"
                if path == base + "/repo/files":
                    files = [{"Path": n, "Name": n, "Type": "blob", "Size": len(d),
                              "Sha256": hashlib.sha256(d).hexdigest(), "Revision": "master"}
                             for n, d in mirror.files.items()]
                    body = {"Code": 200, "Data": {"Files": files}, "Success": True}
                    return self._send(200, json.dumps(body).encode())
                name = query.get("FilePath", [""])[0]
                if path == base + "/repo" and name in mirror.files:
                    return self._send(200, mirror.files[name], "application/octet-stream")
                self._send(404, b'{"Code": 404, "Message": "not found", "Success": false}')

            do_HEAD = do_GET

        return Handler
