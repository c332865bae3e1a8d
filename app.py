"""Qwen Chat: the composition root. Reads config.yaml, opens the store, loads the model, serves.

    python app.py [--config config.yaml] [--no-browser]

Every failure a user can cause (bad config, no network for the download, busy port) ends with one
plain message and a non-zero exit code, never a bare stack trace.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import secrets
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

HERE = Path(__file__).resolve().parent
SAVE_WAIT = 1.0  # seconds the streams of stopped replies get to save them, at exit


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Private chat with Qwen2.5 on this computer.")
    parser.add_argument("--config", type=Path,
                        default=Path(os.environ.get("QWEN_CHAT_CONFIG", HERE / "config.yaml")),
                        help="settings file (written with defaults when missing)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    parser.add_argument("--cli", action="store_true",
                        help="chat in this terminal instead of the web page (same conversations)")
    parser.add_argument("--backup", nargs="?", const="", metavar="FILE", type=str,
                        help="copy every conversation into FILE (default: a dated file in "
                             "data_dir/backups), safe while the app runs, then exit")
    return parser.parse_args(argv)


def run_backup(config, target: str) -> int:
    """`--backup`: a consistent copy of the database (VACUUM INTO), even while the app runs."""
    from qwen_chat.transfer import backup

    db_path = config.data_path / "chat.db"
    if not db_path.is_file():
        return fail(f"There is nothing to back up yet: {db_path} does not exist.")
    path = Path(target) if target else (
        config.data_path / "backups" / time.strftime("chat-%Y%m%d-%H%M%S.db"))
    try:
        backup(db_path, path)
    except Exception as exc:  # noqa: BLE001 - a disk or SQLite error, said in one line
        return fail(f"Backup failed: {exc}")
    print(f"Backed up every conversation to {path.resolve()}", flush=True)
    return 0


def browser_secret(data_dir: Path) -> str:
    """The key that encrypts each browser's identity; kept so identities survive restarts."""
    path = data_dir / "secret.key"
    if not path.exists():
        path.write_text(secrets.token_hex(32), encoding="utf-8")
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip()


def check_port(host: str, port: int) -> str | None:
    """A message naming the port and the key to change when something already listens there."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        if os.name != "nt":  # as the server does: a closed connection's TIME_WAIT is no obstacle
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return (f"Port {port} on {host} is not available ({exc.strerror}). Another program "
                    f"(or another Qwen Chat) uses it: close it, or set `port:` in config.yaml "
                    f"to a free port such as {port + 1}.")
    return None


AUTH_MESSAGE = "Qwen Chat: sign in with the username and password from config.yaml. 请使用 config.yaml 中的账号登录。"


def fail(message: str, code: int = 1) -> int:
    print(f"\nError: {message}", file=sys.stderr, flush=True)
    return code


def build_engine(config, cache_dir: Path, progress):
    """Load the model (download, convert, quantize as needed) and start its engine. Runs in the
    background while the page is served; a failure is told here and shown on the page."""
    from qwen_chat.engine import sources as loader
    from qwen_chat.engine.local import Engine
    from qwen_chat.engine.threads import ThreadGovernor
    from qwen_chat.errors import ModelLoadError

    started = time.perf_counter()
    print(f"Loading {config.model} ...", flush=True)
    try:
        model, tokenizer = loader.load(config.model_source, cache_dir=cache_dir,
                                       precision=config.precision, progress=progress,
                                       threads=config.thread_count)
    except ModelLoadError as exc:
        fail(f"{exc}\n(The page says so too. Fix it, then stop with Ctrl+C and start again.)")
        raise
    kernel = " digits" if getattr(model, "kernel", "") == "digits" else ""
    print(f"Model ready in {time.perf_counter() - started:.1f} s "
          f"({model.precision}{kernel}, {config.thread_count} threads).", flush=True)
    if model.calibration is not None:
        print(f"Kernels: {model.calibration.summary()}", flush=True)
    # threads: auto follows the cores other programs leave free; a number stays fixed.
    governor = ThreadGovernor(config.thread_count, adaptive=config.threads == "auto")
    return Engine(model, tokenizer, name=config.model_id, kv_cache_mb=config.kv_cache_mb,
                  max_batch=config.max_batch, threads=governor)


def wait_in_terminal(engine) -> None:
    """Block until the model is ready, printing each phase and every 10% of it."""
    from qwen_chat import i18n

    told = None
    while not engine.wait_ready(0.5):
        snapshot = engine.progress.snapshot()
        step = (snapshot.phase, (snapshot.percent or 0) // 10)
        if step != told and snapshot.phase not in ("start", "failed"):
            told = step
            print(i18n.loading("en", snapshot), flush=True)


def wait_saved(db_path: Path, timeout: float) -> bool:
    """Wait (bounded) until no reply in the database is still marked streaming: a stopped
    reply is saved by its own stream, a moment after the engine has ended it."""
    from qwen_chat.store import STREAMING

    deadline = time.monotonic() + timeout
    # A connection of its own: only reads, and the store's is busy with the replies' saves.
    with contextlib.closing(sqlite3.connect(str(db_path), timeout=timeout)) as conn:
        while conn.execute("SELECT 1 FROM messages WHERE status = ? LIMIT 1",
                           [STREAMING]).fetchone():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
    return True


def exit_now(code: int) -> NoReturn:
    """End the process without Python's own finalization, which costs more than a second here
    (a full garbage collection and the teardown of torch, transformers and gradio's modules)
    and has nothing left to do: the database is closed and the atexit handlers run first.
    It also skips the C++ destructors that abort a process with a torch op still running."""
    atexit._run_exitfuncs()  # logging's flush among them
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Shutdown:
    """Ctrl+C or SIGTERM: end the replies, save them, close the database and exit, in well
    under 1.5 s. Waiting for the server to end on its own took 3 s more: uvicorn gives open
    responses a grace period, and an open page's event stream never ends by itself. Once every
    reply is saved nothing is left worth waiting for, so whichever comes first ends the
    process: the thread the signal starts (`on_signal`) or the server returning (`finish`)."""

    def __init__(self, service, store):
        self.service, self.store = service, store
        self._once = threading.Lock()

    def on_signal(self) -> None:
        """web.serve's on_stop: runs in its own thread at the first signal."""
        print("Stopping: ending replies and saving them ...", flush=True)
        self.finish()

    def finish(self, code: int = 0) -> NoReturn:
        with self._once:  # the first caller ends the process; a second one waits for that
            self.service.shutdown()  # every reply ends within one step, saved as stopped
            if not wait_saved(self.store.path, SAVE_WAIT):
                print("A reply was still being saved: it is marked interrupted at the next "
                      "start.", flush=True)
            self.store.close()  # folds the write-ahead log back into the database file
            print("Stopped. 已退出。", flush=True)
            exit_now(code)


def main(argv: list[str] | None = None) -> int:
    from qwen_chat.engine import memory

    memory.one_heap()  # before any other thread starts (see qwen_chat/memory.py)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpcore", "urllib3", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # The model's threads own the cores; the tokenizer's own pool would only contend with them.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from qwen_chat.config import ConfigWatcher, load_config
    from qwen_chat.errors import ConfigError, ModelLoadError, ModelNotLoaded

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return fail(str(exc), 2)
    if args.backup is not None:
        return run_backup(config, args.backup)
    if not args.cli and not config.local_only and config.credentials is None:
        return fail(f"host: {config.host} lets other computers reach this app, so it needs a "
                    "sign-in: set username and password in config.yaml (or the environment "
                    "variables QWEN_CHAT_USERNAME and QWEN_CHAT_PASSWORD), or set host: 127.0.0.1.", 2)
    problem = None if args.cli else check_port(config.host, config.port)
    if problem:
        return fail(problem)

    data_dir = config.data_path
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / ".write-test").touch()
        (data_dir / ".write-test").unlink()
    except OSError as exc:
        return fail(f"data_dir: the folder {data_dir} cannot be used ({exc.strerror or exc}). "
                    "Set `data_dir:` in config.yaml to a folder you can write to.", 2)
    cache_dir = Path(os.environ.get("QWEN_CHAT_CACHE") or data_dir / "cache")

    import torch

    from qwen_chat.engine import sources as loader
    from qwen_chat.engine.startup import LoadingEngine, LoadProgress

    if config.engine == "openai":
        from qwen_chat.engine.remote import RemoteEngine

        engine = RemoteEngine(config.base_url, config.model, api_key=config.api_key,
                              max_batch=config.max_batch)
        print(f"Replies come from {config.base_url} (model {config.model}).", flush=True)
    else:
        # One pool of compute threads, one per physical core; no second (inter-op) pool.
        torch.set_num_threads(config.thread_count)
        with contextlib.suppress(RuntimeError):  # only settable before any parallel work started
            torch.set_num_interop_threads(1)
        try:
            loader.check_source(config.model_source)  # a missing file: say so before serving
        except ModelLoadError as exc:
            return fail(str(exc))
        engine = LoadingEngine(lambda progress: build_engine(config, cache_dir, progress),
                               name=config.model_id, max_batch=config.max_batch,
                               progress=LoadProgress(cache_dir / "load-timings.json"))
        if args.cli:  # the terminal has nothing to show before the model is ready: wait here
            try:
                wait_in_terminal(engine)
            except ModelNotLoaded:
                return 1  # build_engine has said why

    # Imported while the model loads in the background (the web stack takes seconds to import).
    from qwen_chat.api import PARAMS as API_PARAMS
    from qwen_chat.api import add_api
    from qwen_chat.chat import ChatService
    from qwen_chat.openai_api import health_router
    from qwen_chat.openai_api import router as openai_router
    from qwen_chat.store import Store
    from qwen_chat.ui import GENERATE, build_ui, launch_options
    from qwen_chat.web import serve

    store = Store(data_dir / "chat.db")
    try:
        service = ChatService(store, engine,
                              ConfigWatcher(args.config, config))
        service.warm()  # pre-fills the system prompt in the background while the page starts
        if args.cli:
            from qwen_chat.cli import TerminalChat, cli_owner

            code = TerminalChat(service, cli_owner(service, data_dir)).run()
            service.shutdown()
            return code
        from qwen_chat.devices import Devices
        from qwen_chat.lan import LanListener
        from qwen_chat.ui.phone import PhoneAccess

        devices = Devices(store)  # phones paired over the local network (off until asked)
        lan = LanListener(devices)
        demo = build_ui(service, secret=browser_secret(data_dir),
                        phone=PhoneAccess(devices, lan, config.port, available=config.local_only))
        with demo:
            add_api(service, concurrency_id=GENERATE)
        demo.queue(default_concurrency_limit=config.max_batch, max_size=config.queue_size)
        ready = lambda url: print(f"\nQwen Chat is running: {url.rstrip('/')}\n"  # noqa: E731
                                  "Press Ctrl+C to stop. 按 Ctrl+C 退出。\n", flush=True)
        shutdown = Shutdown(service, store)
        serve(demo, host=config.host, port=config.port, auth=config.credentials,
              auth_message=AUTH_MESSAGE, launch_options=launch_options(), on_ready=ready,
              open_browser=config.open_browser and not args.no_browser, api_params=API_PARAMS,
              on_stop=shutdown.on_signal,
              routers=(health_router(service),
                       openai_router(service, model_id=config.model_id, api_key=config.openai_key,
                                     key_required=not config.local_only,
                                     queue_size=config.queue_size)),
              lan=lan)
        shutdown.finish()  # the server ended first (nothing was open): saves, closes, exits
    finally:
        store.close()


if __name__ == "__main__":
    exit_now(main())
