"""Run Qwen Chat the way a user does: `python app.py --config config.yaml --no-browser` in its own
process, with its own config.yaml and data folder, answering on a free local port.

`AppServer` writes the config, starts the app, waits until the page answers HTTP 200 and the model
is ready (GET /health says "ok"; or fails with the tail of the app's log), and stops or restarts it over the same data folder, so tests see
exactly what survives a restart. `app_servers` is a pytest fixture handing out such servers and
stopping every one of them at the end of the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests import prestarted

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 180.0  # the first .gguf conversion plus a slow shared machine
# Variables of the test runner's shell that would change what the app reads or where it writes.
_DROPPED_ENV = ("QWEN_CHAT_CONFIG", "QWEN_CHAT_DATA")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def app_env(extra: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment for an app subprocess: this one (with QWEN_CHAT_CACHE, so a .gguf is
    converted once for all tests), minus overrides of config/data paths, plus `extra` (a None
    value removes that variable)."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def write_config(config_dir: Path, values: dict) -> Path:
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / "config.yaml"
    path.write_text(yaml.safe_dump(values, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def run_app(config_dir: Path, values: dict | None = None, *,
            env: dict[str, str | None] | None = None,
            timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Start the app with `values` as config.yaml and wait for it to exit (for start-up failures).
    Raises subprocess.TimeoutExpired if it is still running after `timeout` seconds."""
    config = write_config(Path(config_dir), {"open_browser": False, **(values or {})})
    return subprocess.run([sys.executable, "app.py", "--config", str(config), "--no-browser"],
                          cwd=REPO, env=app_env(env), capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=timeout)


class AppServer:
    """One running Qwen Chat: `url`, `data_dir`, `db_path`, `log_path`; `stop()`, `restart()`.

    It starts as a fork of a process that has imported the app's libraries (tests/prestarted.py)
    unless `prestarted` is False, QWEN_CHAT_TEST_PRESTART=0, or its environment sets variables
    other than the app's own QWEN_CHAT_* (those a library may read when it is imported)."""

    prestarted = os.environ.get("QWEN_CHAT_TEST_PRESTART", "1") != "0"

    def __init__(self, config_dir: Path, *, model: str | Path, port: int | None = None,
                 extra_config: dict | None = None, env: dict[str, str | None] | None = None):
        self.config_dir = Path(config_dir)
        self.port = port or free_port()
        self.config = {"model": str(model), "host": "127.0.0.1", "port": self.port,
                       "open_browser": False, "data_dir": "data", "temperature": 0.0,
                       "max_new_tokens": 48, **(extra_config or {})}
        self.env = env or {}
        self.config_path = write_config(self.config_dir, self.config)
        self.data_dir = self.config_dir / "data"
        self.db_path = self.data_dir / "chat.db"
        self.log_path = self.config_dir / "app.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self, timeout: float = START_TIMEOUT, *, ready: bool = True) -> AppServer:
        """Start the app and return once its page answers HTTP 200 and, if `ready`, once its
        model is loaded (the page is served while it loads)."""
        assert self.proc is None, "already running"
        argv = ["--config", str(self.config_path), "--no-browser"]
        forked = self.prestarted and all(k.startswith("QWEN_CHAT_") for k in self.env)
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')} port {self.port}"
                      f"{' (prestarted)' if forked else ''} ===\n")
            log.flush()
            if forked:
                self.proc = prestarted.Child(argv, app_env(self.env), self.log_path)
            else:
                self.proc = subprocess.Popen(
                    [sys.executable, "app.py", *argv], cwd=REPO, env=app_env(self.env),
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                pytest.fail(f"Qwen Chat exited with code {code} while starting; log "
                            f"{self.log_path}:\n{self.log_tail()}", pytrace=False)
            if self._answers() and (not ready or self.health()[0] == 200):
                return self
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"Qwen Chat did not answer on {self.url} within {timeout:.0f} s; log "
                    f"{self.log_path}:\n{self.log_tail()}", pytrace=False)

    def health(self) -> tuple[int, dict]:
        """(HTTP status, JSON) of GET /health: 200 once the model is ready, 503 while it loads."""
        import json

        try:
            with urllib.request.urlopen(self.url + "health", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except (urllib.error.URLError, OSError, ValueError):
            return 0, {}

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then kill if the app has not exited after `timeout` seconds."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def restart(self, timeout: float = START_TIMEOUT, *, ready: bool = True) -> AppServer:
        self.stop()
        return self.start(timeout, ready=ready)

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def app_servers(tmp_path, model_cache):
    """A factory: `app_servers(model=..., **options)` starts an AppServer in a fresh folder of
    this test's tmp_path; every server started is stopped when the test ends."""
    started: list[AppServer] = []

    def start(*, model, name: str = "app", ready: bool = True, **options) -> AppServer:
        server = AppServer(tmp_path / name, model=model, **options)
        started.append(server)
        return server.start(ready=ready)

    yield start
    for server in started:
        server.stop()
