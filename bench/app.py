"""The headline benchmark: the running app, driven as a user's script drives it, beside its peers.

Why: a user feels the app, not the engine: its HTTP routes, its web stack, its threads, on a
computer that is doing other things too. So this starts the real `python app.py` (defaults, a
temporary config.yaml and data folder, a free port) and times, at the client, a 10-turn
Chinese/English conversation (bench.py's ~40-token user messages, 64 new tokens, sampling at the
app's defaults) through the page's script route `/chat` (over Gradio's HTTP protocol, as curl or
the page's own JavaScript client reads it; and through gradio_client, as README.md's Python
example does, which adds that library's own delivery delay) and through
`/v1/chat/completions` streamed (the openai client, the whole history resent each turn).

In the same run, the same conversation on: the app's engine alone in this process (built by
app.py's own `build_engine`, so the same kernel path and thread governor, no HTTP); plain
transformers in fp32 (bench.py's Baseline: `generate` + TextIteratorStreamer, 2 threads); and
llama.cpp's llama-server at q8_0 and q4_0 (bench/peer.py; skipped with the reason when it is not
built). Each of them runs quiet, then at once again with a background load that this bench
starts and ends (one `while True: pass` process per core but one, at least one), so every
loaded/quiet ratio compares two runs minutes apart.

Model: the real Qwen2.5-0.5B shape with random weights (bench.py's `materialize`); speed does
not depend on the weights, and random weights never end a reply early. Figures: time to first
token (request to first non-empty text) and decode tokens/s = (tokens - 1) / (last text - first
text), tokens as counted by each server (see drivers.py); a row's tok/s pools all its turns.

    .venv/bin/python bench/app.py [--turns 10] [--new-tokens 64] [--json out.json]
                                  [--skip-peer] [--skip-load]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench.py, peer.py and the helpers beside this file
import bench as engine_bench  # noqa: E402 - also puts the repository on sys.path
import drivers  # noqa: E402
import peer  # noqa: E402
from running import (AppFailed, RunningApp, background_load, busy_count,  # noqa: E402
                     config_text)

from qwen_chat.config import parse_config, physical_cores  # noqa: E402

REPO = HERE.parent
SYSTEM = engine_bench.SYSTEM["content"]
WARMUP = "Hi! 你好，请用一句话介绍你自己。"  # an untimed turn (Bench.measure)
APP_ROWS = ("app /chat", "app /chat gradio_client", "app /v1")
ROWS = (*APP_ROWS, "engine alone", "transformers fp32", "llama-server q8_0",
        "llama-server q4_0")
Subjects = Callable[[], contextlib.AbstractContextManager[dict[str, drivers.Converse]]]


class Skipped(Exception):
    """A row that cannot run on this machine (said why); the others go on."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--json", type=Path, default=REPO / ".cache/bench/app.json")
    p.add_argument("--skip-peer", action="store_true", help="no llama-server rows")
    p.add_argument("--skip-load", action="store_true", help="no runs with a background load")
    p.add_argument("--model", type=Path, default=REPO / ".cache/bench/qwen2.5-0.5b-random-bf16")
    p.add_argument("--shared", type=Path,
                   default=REPO.parent / "shared" / "models" / "qwen2.5-0.5b-instruct",
                   help="Qwen2.5-0.5B-Instruct's config.json and tokenizer")
    return p.parse_args()


class Bench:
    """One run: the settings, the machine, and every row's figures as they come in."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.messages = [engine_bench.MESSAGES[k % len(engine_bench.MESSAGES)]
                         for k in range(args.turns)]
        self.machine = engine_bench.machine_info()
        self.kernels: dict[str, str] = {}  # row -> the kernel path it runs on
        self.rows: dict[str, dict] = {}
        self.app: dict = {}
        self.busy = busy_count()
        self.cache_dir = args.model.parent / "app-cache-http"  # the app's int8 weights, kept
        self.port = peer._free_port()
        self.config = config_text(args.model, port=self.port, max_new_tokens=args.new_tokens)

    def context(self, row: str = "") -> str:
        """CPU, ISA, torch and the kernel path: printed with every figure."""
        kernel = self.kernels.get(row) or self.kernels.get("app /chat", "?")
        return (f"{self.machine['cpu']} [{' '.join(self.machine['simd'])}], "
                f"torch {self.machine['torch']}, kernel {kernel}")

    # The things measured, each set up once for its quiet and its loaded run -----------------
    @contextlib.contextmanager
    def the_app(self) -> Iterator[dict[str, drivers.Converse]]:
        log = self.cache_dir.parent / "app-server.log"  # the latest run's
        with RunningApp(self.config, port=self.port, cache_dir=self.cache_dir, log_path=log) as app:
            self.app = {"ready_s": app.ready_s, "kernel": app.kernel, "log": str(app.log_path)}
            print(f"app.py ready in {app.ready_s:.1f} s at {app.url} ({app.kernel})", flush=True)
            if sys.platform.startswith("linux"):
                time.sleep(3)  # past the start's own work
                self.app["idle_cpu"] = app.idle_cpu()
                print(f"app.py idle: {100 * self.app['idle_cpu']:.1f}% of one core", flush=True)
            self.kernels.update(dict.fromkeys(APP_ROWS, app.kernel))
            yield {"app /chat": drivers.chat_http(app.url),
                   "app /chat gradio_client": drivers.chat_route(app.url),
                   "app /v1": drivers.openai_stream(f"{app.url}v1", system=SYSTEM,
                                                    max_tokens=self.args.new_tokens)}

    def llama_server(self, kind: str) -> Subjects:
        @contextlib.contextmanager
        def subjects() -> Iterator[dict[str, drivers.Converse]]:
            bindir = peer.DEFAULT_CACHE / f"build-{peer.build_key()}" / "bin"
            if not all((bindir / t).exists() for t in peer.TARGETS):
                raise Skipped(f"llama.cpp is not built for this CPU in {bindir.parent}; build it "
                              f"once (~9 min): .venv/bin/python bench/peer.py --model {self.args.model}")
            gguf = peer.convert(self.args.model).get(kind)
            if gguf is None:
                raise Skipped("the GGUF conversion failed (peer.py said why above)")
            threads = physical_cores()
            with peer.LlamaServer(bindir, gguf, threads=threads) as srv:
                self.kernels[f"llama-server {kind}"] = f"llama.cpp {kind}, {threads} threads"
                yield {f"llama-server {kind}": drivers.openai_stream(
                    srv.base_url, system=SYSTEM, max_tokens=self.args.new_tokens, model="peer")}
        return subjects

    @contextlib.contextmanager
    def transformers(self) -> Iterator[dict[str, drivers.Converse]]:
        import torch
        import transformers

        transformers.utils.logging.disable_progress_bar()
        torch.set_num_threads(2)
        baseline = engine_bench.in_thread(engine_bench.Baseline, self.args.model)
        self.kernels["transformers fp32"] = "transformers fp32, 2 threads"
        yield {"transformers fp32": drivers.transformers_baseline(
            baseline, system=SYSTEM, max_tokens=self.args.new_tokens)}

    @contextlib.contextmanager
    def engine(self) -> Iterator[dict[str, drivers.Converse]]:
        """Last of all: its scheduler thread (and that thread's OpenMP pool) lives on."""
        import torch

        from qwen_chat.engine.contract import Sampling
        from qwen_chat.engine.startup import LoadProgress

        app_py = load_app_module()
        config = parse_config(self.config, base_dir=REPO)
        torch.set_num_threads(config.thread_count)  # as app.py's main
        engine = engine_bench.in_thread(app_py.build_engine, config, self.cache_dir, LoadProgress())
        engine.warm([{"role": "system", "content": config.system_prompt}])  # as ChatService.warm
        self.kernels["engine alone"] = f"{engine.precision}, {engine.threads} threads"
        sampling = Sampling(temperature=config.temperature, top_p=config.top_p,
                            max_new_tokens=config.max_new_tokens,
                            repetition_penalty=config.repetition_penalty)  # as ChatService
        try:
            yield {"engine alone": drivers.engine_alone(engine, system=SYSTEM, sampling=sampling)}
        finally:
            engine.stop_all()

    # Running and reporting -------------------------------------------------------------------
    def measure(self, row: str, converse: drivers.Converse) -> None:
        self.rows[row] = {"kernel": self.kernels.get(row)}
        for phase in ("quiet",) if self.args.skip_load else ("quiet", "loaded"):
            # Untimed, quiet, before each run: first-call costs are not a chat, and a server that
            # keeps one prompt cache (/v1, llama-server) then starts each run from the same state.
            list(converse([WARMUP]))
            load = background_load(self.busy) if phase == "loaded" else contextlib.nullcontext()
            with load as pids:
                print(f"\n== {row}, {phase}"
                      f"{f' ({self.busy} busy process(es): pid {pids})' if pids else ''}"
                      f" · {self.context(row)}", flush=True)
                loadavg, started, turns = os.getloadavg()[0], time.monotonic(), []
                for k, turn in enumerate(converse(self.messages), 1):
                    turns.append(turn)
                    print(turn_line(k, len(self.messages), turn), flush=True)
                    if turn.new_tokens != self.args.new_tokens:
                        print(f"   WARNING: {turn.new_tokens} tokens, not {self.args.new_tokens}")
            self.rows[row][phase] = {"summary": summarize(turns), "wall_s": time.monotonic() - started,
                                     "loadavg_1min_at_start": loadavg,
                                     "turns": [{**asdict(t), "tok_s": t.tok_s} for t in turns]}

    def run(self, subjects: Subjects, rows: tuple[str, ...]) -> None:
        try:
            with subjects() as converses:
                for row, converse in converses.items():
                    self.measure(row, converse)
        except Skipped as exc:
            self.skip(rows, f"skipped: {exc}")
        except AppFailed as exc:
            self.skip(rows, f"FAILED: {exc}")
        except Exception as exc:  # noqa: BLE001 - one row's failure must not lose the others'
            traceback.print_exc()
            self.skip(rows, f"FAILED: {type(exc).__name__}: {exc}")

    def skip(self, rows: tuple[str, ...], why: str) -> None:
        for row in rows:
            if "quiet" not in self.rows.get(row, {}):
                print(f"\n== {row}: {why}", flush=True)
                self.rows[row] = {"kernel": self.kernels.get(row), "skipped": why}

    def table(self) -> str:
        f = lambda v, spec=".1f": "-" if v is None else format(v, spec)  # noqa: E731
        load = "" if self.args.skip_load else f"loaded = {self.busy} busy process(es). "
        lines = [f"Qwen2.5-0.5B shape, {self.args.turns} turns x {self.args.new_tokens} new tokens; "
                 f"{load}{self.context()}",
                 "| row | kernel | quiet tok/s | quiet TTFT t1 / t%d s | loaded tok/s | "
                 "loaded TTFT t1 / t%d s | loaded / quiet tok/s |" % ((self.args.turns,) * 2),
                 "|---|---|---:|---:|---:|---:|---:|"]
        for row in ROWS:
            data = self.rows.get(row, {"skipped": "not run"})
            if "quiet" not in data:
                lines.append(f"| {row} | {data.get('kernel') or '-'} | {data['skipped'][:70]} |||||")
                continue
            q, l = data["quiet"]["summary"], data.get("loaded", {}).get("summary", {})
            ttft = lambda s: f"{f(s.get('ttft_first_s'), '.3f')} / {f(s.get('ttft_last_s'), '.3f')}"  # noqa: E731
            ratio = l["tok_s"] / q["tok_s"] if l.get("tok_s") and q.get("tok_s") else None
            lines.append(f"| {row} | {data['kernel']} | {f(q['tok_s'])} | {ttft(q)} | "
                         f"{f(l.get('tok_s'))} | {ttft(l) if l else '-'} | {f(ratio, '.2f')} |")
        if "idle_cpu" in self.app:
            lines.append(f"\nThe app, idle (nobody using it): {100 * self.app['idle_cpu']:.1f}% of one core.")
        return "\n".join(lines)

    def result(self, wall_s: float) -> dict:
        return {"machine": self.machine, "kernels": self.kernels, "app": self.app,
                "settings": {"turns": self.args.turns, "new_tokens": self.args.new_tokens,
                             "busy_processes": self.busy, "model": str(self.args.model),
                             "app_config": self.config, "messages": self.messages,
                             "tokens_counted_by": "each server (drivers.py)"},
                "wall_s": wall_s, "rows": self.rows}


def turn_line(k: int, turns: int, turn: drivers.Turn) -> str:
    own = f"  engine-side TTFT {turn.server_ttft_s:.3f} s" if turn.server_ttft_s else ""
    return (f"   turn {k:2}/{turns}  prompt {turn.prompt_tokens or '-':>5}  TTFT {turn.ttft_s:6.3f} s"
            f"  {turn.tok_s or 0:6.1f} tok/s  ({turn.new_tokens} tokens){own}")


def summarize(turns: list[drivers.Turn]) -> dict:
    decode = sum(t.decode_s for t in turns if t.tok_s)
    tokens = sum(t.new_tokens - 1 for t in turns if t.tok_s)
    return {"tok_s": tokens / decode if decode else None,
            "ttft_first_s": turns[0].ttft_s if turns else None,
            "ttft_last_s": turns[-1].ttft_s if turns else None}


def load_app_module():
    """The repository's app.py, the composition root (this file's own name shadows `app`)."""
    spec = importlib.util.spec_from_file_location("qwen_chat_app_py", REPO / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    from qwen_chat.engine import memory

    memory.one_heap()  # as app.py, before any other thread starts (engine alone runs here)
    args = parse_args()
    args.model, args.shared = args.model.resolve(), args.shared.resolve()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr] - progress under nohup
    import torch

    with contextlib.suppress(RuntimeError):  # as app.py: no second (inter-op) thread pool
        torch.set_num_interop_threads(1)
    engine_bench.in_thread(engine_bench.materialize, args.shared, args.model)
    bench, started = Bench(args), time.monotonic()
    print(f"Machine: {bench.context()}; {os.cpu_count()} logical CPUs", flush=True)
    bench.run(bench.the_app, APP_ROWS)
    for kind in ("q8_0", "q4_0"):
        row = f"llama-server {kind}"
        if args.skip_peer:
            bench.skip((row,), "skipped: --skip-peer")
        else:
            bench.run(bench.llama_server(kind), (row,))
    bench.run(bench.transformers, ("transformers fp32",))
    bench.run(bench.engine, ("engine alone",))
    wall = time.monotonic() - started
    print(f"\n{bench.table()}\n\nOne run: {wall / 60:.1f} min.")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(bench.result(wall), indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"Raw figures: {args.json}")
    return 1 if any("FAILED" in r.get("skipped", "") for r in bench.rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
