"""Processes bench/app.py starts and always ends: the app itself, and a background load.

`RunningApp` runs `python app.py` as a user does (its own process, its defaults), with only a
temporary config.yaml and data folder, a free port and `--no-browser`; it is ready when
`GET /health` says so. `background_load(n)` keeps n other processes busy, as a browser or a
video call keeps a core busy on a user's computer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
READY = re.compile(r"Model ready in ([\d.]+) s \(([^)]*)\)")  # app.py's build_engine prints it

# Each busy process dies with the bench, even if the bench is killed (Linux: PR_SET_PDEATHSIG).
BUSY = """\
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != {parent}:
        sys.exit()
while True:
    pass
"""


class AppFailed(RuntimeError):
    pass


def config_text(model: Path, *, port: int, max_new_tokens: int) -> str:
    """config.yaml for the bench: the defaults but for the model, the port and the reply
    length (the /chat route has no length parameter). JSON strings are YAML strings."""
    return (f"model: {json.dumps(str(model))}\nport: {port}\ndata_dir: data\n"
            f"max_new_tokens: {max_new_tokens}\n")


def tail(path: Path, lines: int = 25) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no output)"
    return "\n".join(text.splitlines()[-lines:])


class RunningApp:
    """`with RunningApp(...) as app:` app.url, app.kernel ("int8, 2 threads"), app.ready_s."""

    def __init__(self, config: str, *, port: int, cache_dir: Path, log_path: Path,
                 timeout_s: float = 600) -> None:
        self.config, self.port, self.cache_dir = config, port, cache_dir
        self.log_path, self.timeout_s = log_path, timeout_s
        self.url = f"http://127.0.0.1:{port}/"
        self.kernel, self.ready_s = "?", float("nan")
        self.proc: subprocess.Popen[bytes] | None = None
        self.folder: Path | None = None

    def __enter__(self) -> RunningApp:
        self.folder = Path(tempfile.mkdtemp(prefix="qwen-chat-bench-"))
        (self.folder / "config.yaml").write_text(self.config, encoding="utf-8")
        # The user's own overrides must not leak in; the int8 weights are cached across runs
        # (QWEN_CHAT_CACHE), so this is a start like every start after the first.
        env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_CHAT_")}
        env["QWEN_CHAT_CACHE"] = str(self.cache_dir)
        cmd = [sys.executable, "-u", str(REPO / "app.py"), "--config",
               str(self.folder / "config.yaml"), "--no-browser"]
        started = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.folder, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        try:
            self._wait_healthy()
        except BaseException:
            self.__exit__()
            raise
        self.ready_s = time.monotonic() - started
        if found := READY.search(self.log_path.read_text(errors="replace")):
            self.kernel = found.group(2)
        return self

    def idle_cpu(self, seconds: float = 10.0) -> float:
        """The app's CPU use while nobody uses it, as a share of one core (Linux /proc)."""
        def used() -> float:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        before = used()
        time.sleep(seconds)
        return (used() - before) / seconds

    def _wait_healthy(self) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AppFailed(f"app.py exited with code {self.proc.returncode} before its model "
                                f"was ready. Last lines of {self.log_path}:\n{tail(self.log_path)}")
            with contextlib.suppress(OSError):  # refused while starting, 503 while loading
                if opener.open(f"{self.url}health", timeout=5).status == 200:
                    return
            time.sleep(0.5)
        raise AppFailed(f"app.py was not ready after {self.timeout_s:.0f} s. "
                        f"Last lines of {self.log_path}:\n{tail(self.log_path)}")

    def __exit__(self, *exc: object) -> None:
        """Ctrl+C as a user stops it (the app saves and exits), then a kill if it hangs."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def busy_count() -> int:
    """One busy process per core but one, at least one."""
    return max(1, (os.cpu_count() or 1) - 1)


@contextlib.contextmanager
def background_load(n: int) -> Iterator[list[int]]:
    """n processes spinning `while True: pass`, killed on the way out whatever happens.
    Start it from the main thread: the death signal follows the thread that started them."""
    code = BUSY.format(parent=os.getpid())
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
        time.sleep(1.0)  # let them take their cores (and a thread governor notice)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
