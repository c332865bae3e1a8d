"""Start-up time of the real app: from `python app.py` to a page that answers, to the model being
ready (GET /health says ok; the page is served while the model loads), and to a first reply.

    .venv/bin/python bench/startup.py [--model FOLDER] [--runs 3]

Uses the Qwen2.5-0.5B-shaped model that bench/bench.py materializes (random weights, real shape:
it loads exactly as fast as the real model). The first run may include one-off work (a quantized
weights cache being written); the runs after it are what a user sees on every later start.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / ".cache" / "bench" / "qwen2.5-0.5b-random-bf16"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic()
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


def one_run(model: Path, data_dir: Path) -> dict:
    port = free_port()
    config = data_dir / "config.yaml"
    config.write_text(f"model: {model}\nport: {port}\nopen_browser: false\nmax_new_tokens: 8\n"
                      f"data_dir: {data_dir / 'data'}\n", encoding="utf-8")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--config", str(config)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "QWEN_CHAT_DATA": str(data_dir / "data")})
    try:
        page = wait_http(f"http://127.0.0.1:{port}/", proc, 300) - started
        ready = wait_http(f"http://127.0.0.1:{port}/health", proc, 300) - started
        from gradio_client import Client

        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        final = client.predict("startup-benchmark-owner", "", "Hello", api_name="/chat")
        reply = time.monotonic() - started
        assert final["status"] == "complete", final
    finally:
        proc.terminate()
        proc.wait(30)
    return {"page_s": round(page, 2), "model_ready_s": round(ready, 2),
            "first_reply_s": round(reply, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        sys.exit(f"No model at {args.model}: run bench/bench.py once to materialize it.")
    with tempfile.TemporaryDirectory() as tmp:
        runs = [one_run(args.model, Path(tmp)) for _ in range(args.runs)]
    print("| run | page answers (s) | model ready (s) | first reply (s) |\n|---|---|---|---|")
    for i, run in enumerate(runs, 1):
        print(f"| {i} | {run['page_s']} | {run['model_ready_s']} | {run['first_reply_s']} |")
    out = REPO / "bench" / "output" / "startup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(runs, indent=2), encoding="utf-8")
    print(f"written {out}")


if __name__ == "__main__":
    main()
