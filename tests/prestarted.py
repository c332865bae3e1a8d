"""Start `python app.py ...` without paying its imports each time: a fork of a process that has
already imported torch, transformers, gradio and qwen_chat (multiprocessing's forkserver with
this module preloaded).

Most tests start the app once or more (the kill test nine times), and each start spent about
10 s of its 12 importing those libraries (measured: gradio 4.8 s, torch 2.3 s, transformers 3 s),
the same bytes every time. The child is still a process of its own, with its own pid, signals,
environment, working directory, stdin, log file and exit code; from `main()` on it runs
app.py's own `__main__` code (runpy), atexit handlers and `exit_now` included.

What a fork cannot give: environment variables read while those libraries are imported.
So a test that passes its own environment (a Hub mirror, HF_HOME, PYTHONPATH for an optional
package) starts the app with the real interpreter instead (tests/server.py decides), as do the
tests of start-up itself (test_loading, test_launchers, test_bootstrap).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRELOAD = "tests.app_imports"  # imported by the fork server, once

_context: multiprocessing.context.BaseContext | None = None


def _context_once() -> multiprocessing.context.BaseContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload([PRELOAD])
    return _context


def _run(argv: list[str], env: dict[str, str], log_path: str) -> None:
    """The child: become `python app.py argv` in REPO with `env`, output appended to log_path."""
    os.chdir(REPO)
    os.environ.clear()
    os.environ.update(env)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter has them
    for sig in (signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    sys.argv = ["app.py", *argv]
    sys.path[0] = str(REPO)
    code = 0
    try:
        runpy.run_path(str(REPO / "app.py"), run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - as the interpreter would: the traceback, then 1
        import traceback

        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Child:
    """The part of subprocess.Popen that AppServer and the tests use: pid, poll, wait,
    send_signal, kill (exit codes as Popen's: -N for signal N)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path):
        Path(log_path).touch()  # there at once, for a reader that waits for a line in it
        # daemon: one a test leaves running is stopped (SIGTERM) when pytest exits, not waited for.
        self._process = _context_once().Process(target=_run, args=(argv, env, str(log_path)),
                                                daemon=True)
        self._process.start()
        self.pid = self._process.pid
        self.args = ["app.py", *argv]

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)
