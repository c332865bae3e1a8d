"""Benchmark: plain transformers (baseline) against this app's engine, side by side, on CPU.

Subject: the real Qwen2.5-0.5B shape with random weights, saved once to a cache folder.
Scenario: a 10-turn mixed Chinese/English chat (~40-token user turns, 64-token greedy replies),
turns interleaved (baseline k, engine k) in this process, then one ~2,000-token prompt; peak
memory from one child process per side. Usage and options: bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as app.py: the model owns the cores

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer  # noqa: E402

from qwen_chat.config import Config, physical_cores  # noqa: E402

SYSTEM = {"role": "system", "content": Config().system_prompt}
MESSAGES = [  # 37-41 tokens each with the Qwen2 tokenizer (checked at start)
    "你好！I am planning a weekend trip to Hangzhou with my family. 请推荐三个适合孩子的景点，and tell me roughly how long each visit takes, 谢谢。",
    "Thanks. 我们周六早上从上海出发，坐高铁大概要多久？Should we book the tickets in advance, or can we just buy them at the station on the day?",
    "西湖附近有什么好吃的餐厅吗？My daughter does not eat spicy food, so please suggest a few dishes that are mild and 适合小朋友，价格也不要太贵，谢谢你。",
    "If it rains on Saturday, 有没有室内的活动可以安排？We would also like to visit a small museum that explains the long history of Chinese tea in simple English for kids.",
    "请帮我把第一天的行程整理成一个表格：time, place, transport, and estimated cost in RMB for four people. 预算大概是每人五百元，包括午饭和门票。",
    "How do I say 'Where is the nearest subway station?' in Chinese? 请同时给出拼音和汉字，and explain the four tones slowly, step by step, for a complete beginner like me.",
    "我儿子对科学很感兴趣。Is there a good science museum in Hangzhou that is open on Sunday morning? 如果有，门票需要提前在网上预约吗？大概多少钱一张？",
    "Could you compare staying in a hotel near West Lake with staying near the East railway station? 我们主要考虑价格、交通是否方便，以及晚上带孩子出门是否安全。",
    "我们想买一些龙井茶作为礼物送给朋友。How can I tell good Longjing tea from cheap tea, and 价格一般在什么范围比较合理？哪里买最好？",
    "最后，请用中文和英文各写一段简短的总结，summarizing the whole two-day plan so that I can share it with my wife tonight after dinner, 谢谢！",
]
LONG_TOKENS, LONG_NEW_TOKENS = 2000, 32
TYPED_STEP = 8  # "typed" run: the page sends a draft per keystroke; here one every 8 characters
TARGETS = {"engine_ttft_growth": (1.5, "engine TTFT turn N / turn 1"),
           "ttft_turn1_ratio": (0.3, "engine / baseline TTFT, turn 1"),
           "decode_ratio": (0.35, "engine / baseline ms per token (mean over turns)"),
           "engine_peak_rss_gb": (1.5, "engine peak RSS, GB (10^9 bytes)")}


@dataclass
class Turn:
    prompt_tokens: int
    new_tokens: int
    ttft_s: float
    ms_per_token: float | None  # decode, after the first token
    cached_tokens: int | None = None  # engine only, when it reports it
    call_s: float | None = None  # engine only: time inside engine.generate() before it returned


class TimedStreamer(TextIteratorStreamer):
    """Timestamps every generated token as generate() hands it over (like engine._TimedStreamer)."""

    def __init__(self, tokenizer: Any):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        if not self.next_tokens_are_prompt:
            self.times += [time.perf_counter()] * int(value.numel())
        super().put(value)


class Baseline:
    """The usual app: re-template the whole history, re-prefill it, stream from a thread."""

    name = "baseline"

    def __init__(self, folder: Path):
        started = time.perf_counter()
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.load_s = time.perf_counter() - started

    def reply(self, messages: list[dict], new_tokens: int, key: str,
              typed: bool = False) -> tuple[dict, Turn]:
        """`typed` changes nothing: the usual app has nothing to do before Send."""
        started = time.perf_counter()
        inputs = self.tok.apply_chat_template(messages, add_generation_prompt=True,
                                              return_dict=True, return_tensors="pt")
        streamer = TimedStreamer(self.tok)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.model.generate(**inputs, streamer=streamer, max_new_tokens=new_tokens,
                                    min_new_tokens=new_tokens, do_sample=False, temperature=None,
                                    top_p=None, top_k=None, repetition_penalty=1.0,
                                    pad_token_id=self.tok.pad_token_id)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the stream ends
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        text, _ = "".join(streamer), thread.join()
        if errors:
            raise errors[0]
        t = streamer.times
        ms = (t[-1] - t[0]) / (len(t) - 1) * 1000 if len(t) > 1 else None
        return ({"role": "assistant", "content": text},
                Turn(int(inputs["input_ids"].shape[-1]), len(t), t[0] - started, ms))


class AppEngine:
    """This app's loading path and engine, with the defaults of Config(); new API feature-detected."""

    name = "engine"

    def __init__(self, folder: Path, cache_dir: Path):
        from qwen_chat.engine import sources as loader
        from qwen_chat.engine.local import Engine

        config = Config()
        load_kw: dict[str, Any] = {}
        engine_kw: dict[str, Any] = {}
        if "precision" in inspect.signature(loader.load).parameters:
            load_kw["precision"] = getattr(config, "precision", "auto")
        if "kv_cache_mb" in inspect.signature(Engine).parameters and hasattr(config, "kv_cache_mb"):
            engine_kw["kv_cache_mb"] = config.kv_cache_mb
        self.cache_key = "cache_key" in inspect.signature(Engine.generate).parameters
        cached = sorted(p.name for p in (cache_dir / "quantized").glob("*"))  # precision's cache
        started = time.perf_counter()
        model, tok = loader.load(str(folder), cache_dir=cache_dir, **load_kw)
        loaded = time.perf_counter()
        self.engine = Engine(model, tok, **engine_kw)
        self.warmed = 0
        if hasattr(self.engine, "warm"):  # as app.py does at start (ChatService.warm)
            self.warmed = self.engine.warm([SYSTEM] if SYSTEM["content"].strip() else [])
        self.load_s = time.perf_counter() - started
        linear = type(model.get_submodule("model.layers.0.mlp.down_proj"))
        dtypes = sorted({str(t.dtype) for t in model.state_dict().values()})
        self.features = {"loader_load_s": loaded - started, "cache_key": self.cache_key,
                         **load_kw, **engine_kw, "precision_used": getattr(model, "precision", ""),
                         "mlp_linear": linear.__qualname__, "tensor_dtypes": dtypes,
                         "quantized_cache_before_load": cached,
                         "system_prompt_tokens_prefilled_at_start": self.warmed}

    def reply(self, messages: list[dict], new_tokens: int, key: str,
              typed: bool = False) -> tuple[dict, Turn]:
        """The reply as the app stores it for the next turn: its text, and its token ids when
        this engine gives them (ChatService passes them back; Engine.prompt_ids).

        `typed`: the last message was typed in the page, which hands the engine a draft as it
        grows (Engine.prepare, one every TYPED_STEP characters here, each prefilled before the
        next: a person types 8 characters in about a second). The clock starts at Send."""
        from qwen_chat.engine.local import Sampling

        sampling = Sampling(temperature=0, max_new_tokens=new_tokens, repetition_penalty=1.0)
        kw = {"cache_key": key} if self.cache_key and key else {}
        if typed and kw and hasattr(self.engine, "prepare"):
            text = messages[-1]["content"]
            for end in [*range(TYPED_STEP, len(text), TYPED_STEP), len(text)]:
                draft = [*messages[:-1], {"role": "user", "content": text[:end]}]
                self.engine.prepare(draft, key).wait()
        started = time.perf_counter()
        gen = self.engine.generate(messages, sampling, **kw)
        call_s = time.perf_counter() - started  # templating + tokenizing happen before Stats' clock
        text, s = "".join(gen), gen.stats
        ms = 1000 / s.tokens_per_s if s.tokens_per_s else None
        message = {"role": "assistant", "content": text}
        if getattr(gen, "token_ids", None):
            message["token_ids"] = gen.token_ids
        return message, Turn(s.prompt_tokens, s.new_tokens, call_s + (s.ttft or float("nan")), ms,
                          getattr(s, "cached_tokens", None), call_s)


Side = Baseline | AppEngine


def materialize(shared: Path, folder: Path) -> None:
    """Save the Qwen2.5-0.5B shape with seeded random weights in bf16 (the dtype of the real
    checkpoint on the Hub), its tokenizer and generation config."""
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return
    from transformers import Qwen2Config, Qwen2ForCausalLM

    print(f"Materializing random-weight Qwen2.5-0.5B into {folder} (once) ...", flush=True)
    config = Qwen2Config.from_pretrained(shared)
    config.dtype = "bfloat16"
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(shared).save_pretrained(tmp)
    shutil.copy(shared / "generation_config.json", tmp / "generation_config.json")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def long_prompt(tok: Any) -> str:
    """~LONG_TOKENS tokens of mixed text: numbered paragraphs cycling through MESSAGES."""
    parts = ["请阅读下面的旅行笔记，然后总结要点。Please read these travel notes and summarise them.\n"]
    count = lambda: len(tok("".join(parts), add_special_tokens=False)["input_ids"])  # noqa: E731
    i = 0
    while count() < LONG_TOKENS - 25:
        parts.append(f"\n第{i + 1}段 (note {i + 1}): {MESSAGES[i % len(MESSAGES)]}")
        i += 1
    return "".join(parts)


def converse(sides: list[Side], turns: int, new_tokens: int, verbose: bool,
             typed: bool = False) -> dict[str, list[Turn]]:
    """The multi-turn chat, each side with its own history; interleaved per turn. `typed`: each
    user message is typed in the page before Send (see AppEngine.reply)."""
    history: dict[str, list[dict]] = {s.name: [dict(SYSTEM)] for s in sides}
    rows: dict[str, list[Turn]] = {s.name: [] for s in sides}
    for k in range(turns):
        for side in sides:
            history[side.name].append({"role": "user", "content": MESSAGES[k % len(MESSAGES)]})
            key = "bench-typed" if typed else "bench-conv"
            reply, turn = side.reply(history[side.name], new_tokens, key, typed=typed)
            history[side.name].append(reply)
            rows[side.name].append(turn)
            if turn.new_tokens != new_tokens:
                print(f"WARNING: {side.name} turn {k + 1} generated {turn.new_tokens} tokens, "
                      f"not {new_tokens}", file=sys.stderr, flush=True)
            if verbose:
                print(f"  turn {k + 1:2}/{turns} {side.name:8}{' typed' if typed else ''} prompt {turn.prompt_tokens:5} tok"
                      f"  TTFT {turn.ttft_s:6.3f} s  {turn.ms_per_token or 0:6.1f} ms/tok")
    return rows


def long_case(sides: list[Side], text: str, new_tokens: int) -> dict[str, Turn]:
    prompt = [dict(SYSTEM), {"role": "user", "content": text}]
    return {side.name: side.reply(prompt, new_tokens, "bench-long")[1] for side in sides}


def peak_rss() -> dict[str, int | None]:
    """ru_maxrss keeps the parent's peak across (v)fork+exec on Linux; VmHWM is this process's own."""
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.exists() else []
    hwm = [int(ln.split()[1]) * 1024 for ln in lines if ln.startswith("VmHWM:")]
    return {"ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "vmhwm_bytes": hwm[0] if hwm else None}


def warm_up(side: Side) -> None:
    """First-call set-up is not what we measure; no system prompt and no cache key, so no head
    start for turn 1 from a cache."""
    side.reply([{"role": "user", "content": MESSAGES[-1] + MESSAGES[-2]}], 4, "")


def cpu_seconds() -> tuple[float, float, float]:
    """(busy, total) CPU seconds of the whole machine (/proc/stat) and this process's own."""
    ticks = [int(x) / os.sysconf("SC_CLK_TCK")
             for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks), sum(os.times()[:4])  # minus idle, iowait


def in_thread(fn, *args):
    """fn(*args) in a thread of its own that ends with it; returns its result (or raises).

    No torch work runs on this process's main thread: every thread that runs a parallel torch
    op keeps an OpenMP (libgomp) thread pool while it lives, and once there are more pooled
    threads than cores libgomp stops spinning between parallel regions, which makes every
    decode step of *either* side about a third slower (qwen_chat/engine.py measures it). The
    app loads its model in a background thread too and never computes on its main thread, so
    each side gets the conditions it has in a real process; the baseline gets its best case."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def child(args: argparse.Namespace, app_cache: Path) -> None:
    """One side alone in a fresh process: load + scenario; report its peak RSS as one JSON line.
    The engine's process is set up as app.py sets up its own (one heap: qwen_chat/memory.py)."""
    side = in_thread(Baseline, args.cache) if args.child == "baseline" else in_thread(
        AppEngine, args.cache, app_cache)
    if args.child == "first-start":  # only load: quantizes and writes the app's int8 cache
        print("CHILD_JSON " + json.dumps({"load_s": side.load_s, "peak": peak_rss()}), flush=True)
        return
    warm_up(side)
    rows = converse([side], args.turns, args.new_tokens, verbose=False)[side.name]
    typed = converse([side], args.turns, args.new_tokens, verbose=False, typed=True)[side.name] \
        if hasattr(getattr(side, "engine", None), "prepare") else None
    long = None
    if not args.skip_long:
        long = long_case([side], long_prompt(AutoTokenizer.from_pretrained(args.cache)),
                         args.long_tokens)[side.name]
    print("CHILD_JSON " + json.dumps({
        "load_s": side.load_s, "peak": peak_rss(), "turns": [asdict(t) for t in rows],
        "typed": [asdict(t) for t in typed] if typed else None,
        "long": asdict(long) if long else None,
        "features": getattr(side, "features", None)}), flush=True)


def run_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--turns",
           str(args.turns), "--new-tokens", str(args.new_tokens), "--cache", str(args.cache),
           "--shared", str(args.shared)] + (["--skip-long"] if args.skip_long else [])
    print(f"Memory run: {name} alone in a child process ...", flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD_JSON ")]
    if proc.returncode or not lines:
        raise SystemExit(f"memory child '{name}' failed (exit {proc.returncode})")
    data = json.loads(lines[-1][len("CHILD_JSON "):])
    data["peak_rss_gb"] = (data["peak"]["vmhwm_bytes"] or data["peak"]["ru_maxrss_bytes"]) / 1e9
    return data


def machine_info() -> dict[str, Any]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    field = lambda key: next((ln.split(":", 1)[1].strip() for ln in lines  # noqa: E731
                              if ln.startswith(key)), "")
    git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    return {"cpu": field("model name"), "logical_cpus": os.cpu_count(),
            "physical_cores": physical_cores(), "torch_threads": torch.get_num_threads(),
            "simd": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
                     if f in field("flags").split()], "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "git": git}


def report(rows: dict[str, list[Turn]], long: dict[str, Turn], load: dict[str, float],
           memory: dict[str, Any], typed: list[Turn] | None = None) -> dict[str, Any]:
    """`typed`: the engine's turns when each message was typed in the page before Send."""
    base, eng = rows["baseline"], rows["engine"]
    f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    row = lambda label, b, e, t: (  # noqa: E731
        f"| {label} | {b.prompt_tokens} | {b.ttft_s:.3f} | {f(b.ms_per_token, '.1f')} | "
        f"{e.prompt_tokens} | {f(e.cached_tokens, 'd')} | {e.ttft_s:.3f} | "
        f"{f(e.ms_per_token, '.1f')} | {f(t and t.cached_tokens, 'd')} | "
        f"{f(t and t.ttft_s, '.3f')} |")
    print("\n| turn | base prompt | base TTFT s | base ms/tok | eng prompt | eng cached "
          "| eng TTFT s | eng ms/tok | typed: eng cached | typed: eng TTFT s |"
          "\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(row(k, b, e, t) for k, (b, e, t)
                    in enumerate(zip(base, eng, typed or [None] * len(eng)), 1)))
    if long:
        print(row("long", long["baseline"], long["engine"], None))
    print(f"\nLoad time, this process: baseline {load['baseline']:.2f} s, "
          f"engine {load['engine']:.2f} s")
    if memory:
        print(f"Load time, fresh process: baseline {memory['baseline']['load_s']:.2f} s, "
              f"engine {memory['engine']['load_s']:.2f} s")
        print(f"Peak RSS: baseline {memory['baseline']['peak_rss_gb']:.2f} GB, "
              f"engine {memory['engine']['peak_rss_gb']:.2f} GB")
        first = memory["first-start"]
        print(f"Engine's first start ever (quantize, write the cache): {first['load_s']:.1f} s, "
              f"peak RSS {first['peak_rss_gb']:.2f} GB")
    mean_ms = {n: mean(t.ms_per_token for t in r if t.ms_per_token) for n, r in rows.items()}
    div = lambda a, b: a / b if a is not None and b else None  # noqa: E731
    ratios = {"baseline_ttft_growth": div(base[-1].ttft_s, base[0].ttft_s),
              "engine_ttft_growth": div(eng[-1].ttft_s, eng[0].ttft_s),
              "ttft_turn1_ratio": div(eng[0].ttft_s, base[0].ttft_s),
              "decode_ratio": div(mean_ms["engine"], mean_ms["baseline"]),
              "engine_peak_rss_gb": memory["engine"]["peak_rss_gb"] if memory else None,
              "typed_engine_ttft_growth": div(typed[-1].ttft_s, typed[0].ttft_s) if typed else None,
              "typed_ttft_turn1_ratio": div(typed[0].ttft_s, base[0].ttft_s) if typed else None}
    print(f"Mean ms/token: baseline {mean_ms['baseline']:.1f}, engine {mean_ms['engine']:.1f}; "
          f"baseline TTFT turn {len(base)} / turn 1: {f(ratios['baseline_ttft_growth'], '.2f')}\n")
    verdicts = {}
    for key, (target, label) in TARGETS.items():
        value = ratios[key]
        verdicts[key] = "SKIP" if value is None else "PASS" if value <= target else "FAIL"
        print(f"{label:50} {f(value, '.3f'):>7}  target <= {target:<4}  {verdicts[key]}")
        if f"typed_{key}" in ratios and typed:  # the same figure when messages are typed
            value = ratios[f"typed_{key}"]
            verdicts[f"typed_{key}"] = "PASS" if value <= target else "FAIL"
            print(f"{'  ... typed in the page before Send':50} {f(value, '.3f'):>7}  "
                  f"target <= {target:<4}  {verdicts[f'typed_{key}']}")
    return {"ratios": ratios, "mean_ms_per_token": mean_ms, "verdicts": verdicts,
            "targets": {k: v[0] for k, v in TARGETS.items()}}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--skip-long", action="store_true", help="no ~2,000-token prompt case")
    p.add_argument("--skip-memory", action="store_true", help="no child processes for peak RSS")
    p.add_argument("--quick", action="store_true", help="smoke test: 3 turns of 16 tokens")
    p.add_argument("--cache", type=Path, default=REPO / ".cache/bench/qwen2.5-0.5b-random-bf16")
    p.add_argument("--shared", type=Path,
                   default=REPO.parent / "shared" / "models" / "qwen2.5-0.5b-instruct")
    p.add_argument("--child", choices=["first-start", "baseline", "engine"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.turns, args.new_tokens = 3, 16
    args.long_tokens = min(LONG_NEW_TOKENS, args.new_tokens)
    args.cache, args.shared = args.cache.resolve(), args.shared.resolve()
    return args


def main() -> None:
    args = parse_args()
    if args.child in ("engine", "first-start"):
        from qwen_chat.engine import memory

        memory.one_heap()  # as app.py does first thing
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr] - progress under nohup
    torch.set_num_threads(physical_cores())  # as app.py with `threads: auto`
    with contextlib.suppress(RuntimeError):  # as app.py: no second (inter-op) thread pool
        torch.set_num_interop_threads(1)
    app_cache = args.cache.parent / "app-cache"
    if not (args.cache / "config.json").is_file() and not (args.shared / "config.json").is_file():
        raise SystemExit(f"Model shape not found: expected {args.shared}/config.json "
                         "(Qwen2.5-0.5B-Instruct config + tokenizer); pass --shared PATH.")
    in_thread(materialize, args.shared, args.cache)
    if args.child:
        return child(args, app_cache)
    tok = AutoTokenizer.from_pretrained(args.cache)
    counts = [len(tok(m, add_special_tokens=False)["input_ids"]) for m in MESSAGES]
    print(f"User turn tokens: {counts}", "" if all(35 <= c <= 45 for c in counts)
          else "WARNING: not all within 35-45")
    text = long_prompt(tok)
    # Children first, while this process is still small (see peak_rss about ru_maxrss).
    # "first-start" loads the engine once with an empty app cache (quantizes, writes the cache);
    # the "engine" child then measures a normal start, as every start after the first is.
    if not args.skip_memory:
        shutil.rmtree(app_cache, ignore_errors=True)
    cpu_start = cpu_seconds()
    memory = {} if args.skip_memory else {
        n: run_child(n, args) for n in ("first-start", "baseline", "engine")}
    if memory:
        # Each side ran the whole scenario alone in a process of its own, as in a real app:
        # in one process, a thread pool of one side slows the other (see in_thread).
        rows = {n: [Turn(**t) for t in memory[n]["turns"]] for n in ("baseline", "engine")}
        long = {} if args.skip_long else {n: Turn(**memory[n]["long"])
                                          for n in ("baseline", "engine")}
        load = {n: memory[n]["load_s"] for n in ("baseline", "engine")}
        features = memory["engine"]["features"]
        typed = [Turn(**t) for t in memory["engine"]["typed"]] if memory["engine"].get("typed") else None
    else:  # --skip-memory: both sides in this process, turns interleaved (see bench/README.md)
        import transformers.models.qwen2.modeling_qwen2  # noqa: F401 - imports are not load time
        from qwen_chat.engine import local, sources  # noqa: F401
        print("Loading both sides in this process ...", flush=True)
        baseline, app = in_thread(Baseline, args.cache), in_thread(AppEngine, args.cache, app_cache)
        features = app.features
        sides: list[Side] = [baseline, app]
        for side in sides:
            warm_up(side)
        print(f"Conversation: {args.turns} turns x {args.new_tokens} new tokens", flush=True)
        rows = converse(sides, args.turns, args.new_tokens, verbose=True)
        typed = converse([app], args.turns, args.new_tokens, verbose=True, typed=True)["engine"] \
            if hasattr(app.engine, "prepare") else None
        long = {}
        if not args.skip_long:
            print(f"Long prompt ({len(tok(text)['input_ids'])} tokens of text) ...", flush=True)
            long = long_case(sides, text, args.long_tokens)
        load = {s.name: s.load_s for s in sides}
    print(f"Engine: {features}", flush=True)
    busy, total, mine = (b - a for a, b in zip(cpu_start, cpu_seconds()))
    others = max(0.0, busy - mine) / total  # share of the machine's CPU used by other processes
    print(f"\nOther processes used {others:.0%} of the machine's CPU during the timed part."
          + (" Timings are noisy: rerun on an idle machine." if others > 0.05 else ""))
    summary = report(rows, long, load, memory, typed)

    out = Path(__file__).resolve().parent / "output" / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": {**machine_info(), "others_cpu_share_during_timing": others},
              "engine_features": features,
              "settings": {"turns": args.turns, "new_tokens": args.new_tokens,
                           "long_new_tokens": args.long_tokens, "model_folder": str(args.cache),
                           "user_turn_tokens": counts},
              "turns": {n: [asdict(t) for t in r] for n, r in rows.items()},
              "typed_turns": [asdict(t) for t in typed] if typed else None,
              "long": {n: asdict(t) for n, t in long.items()}, "load_s": load,
              "memory": memory, **summary}
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"\nWrote {out}")


if __name__ == "__main__":
    main()
