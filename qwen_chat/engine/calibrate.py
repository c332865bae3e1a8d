"""Which kernels run this model fastest on this CPU: measured once, at the first start.

The fastest path differs between CPUs (on an AVX2 laptop, an AVX-512 EPYC and an AMX Xeon the
winners differ), so `precision: auto` does not fix one. `calibrate` times, with random weights
of the model's own layer shapes and the thread count the model will use:

* decode (one row through every decoder layer's seven projections): the int8 kernel against the
  int4 kernel. A decode step streams every weight from memory, so the layers are as many as the
  model has (more than any CPU cache holds), each called once per pass, as in a real step;
* prompts (48 rows: a typical message; 512: a pasted page) through two layers: each quantized
  kernel itself against its weights dequantized into a scratch buffer and a float32 matmul
  (quality with fp32 prompts and int8 decode: 95.3% agreement, KL 0.0053).

Decode is timed only when more than one format passes the gate (today int8 alone does: int4 with
groups of 32 gave 72.8% agreement), so a first start spends about a second here.

It keeps the fastest decode format among those that pass the quality gate (`QUALITY`: top-1
agreement with fp32 of at least 95%, measured by bench/quality.py on SmolLM2-135M-Instruct and
checked in CI by tests/test_calibrate.py), and for it the fastest prompt path. The lm_head is int8
in every candidate (int4 on lm_head fails the gate), so it is not timed.

The result is cached in the cache folder, keyed by the CPU (model name and instruction sets),
torch's version, the model's shapes and the thread count: a later start reads it (no timing).
A bf16 prompt path is not a candidate: with int8 weights it gave 94.4% agreement (bar 95%).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import int4
from .int4 import Int4Linear
from .quantized import Int8Linear, Prefill

log = logging.getLogger(__name__)

VERSION = 1  # bump when what is timed, or how, changes (invalidates cached choices)
MIN_AGREEMENT = 0.95
# bench/quality.py, SmolLM2-135M-Instruct, 54 prompts, 864 positions, top-1 agreement with fp32
# (int4 on the model with its input features permuted: `--scramble`, see bench/quality.py).
QUALITY = {"int8": 0.954, "int4": 0.728}
PROMPT_ROWS = (48, 512)
REPEATS = 5


@dataclass
class Calibration:
    """The choice and the figures behind it (milliseconds)."""
    precision: str
    prefill: str  # "kernel", or "fp32 from N rows"
    decode_ms: dict[str, float] = field(default_factory=dict)  # format -> one decode pass
    prompt_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # "int8 fp32" -> rows -> ms
    quality: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0
    threads: int = 1

    def plan(self) -> Prefill:
        if self.prefill == "kernel":
            return Prefill(1 << 30, None)
        return Prefill(int(self.prefill.rsplit(" ", 2)[1]), torch.float32)

    def summary(self) -> str:
        """E.g. "int8 (a token's layers int8 41.0 ms, int4 24.1 ms; prompts: fp32 from 24 rows,
        measured here)": the System panel's precision."""
        decode = ", ".join(f"{k} {v:.1f} ms" for k, v in self.decode_ms.items())
        decode = f"a token's layers {decode}" if decode else "the only format passing the quality gate"
        return f"{self.precision} ({decode}; prompts: {self.prefill}, measured here)"


def cpu_identity() -> str:
    """The CPU's model name and instruction-set flags (Linux: /proc/cpuinfo), else platform's."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
        name = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), "")
        flags = next((l.split(":", 1)[1].split() for l in lines if l.startswith(("flags", "Features"))), [])
        keep = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sve", "asimd", "neon")))
        return f"{name} | {' '.join(keep)}"
    except OSError:
        return f"{platform.processor()} | {platform.machine()}"


def shapes(config) -> list[tuple[int, int]]:
    """(out_features, in_features) of one decoder layer's projections (Llama / Qwen2 layout)."""
    h, inter = config.hidden_size, config.intermediate_size
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    hd = getattr(config, "head_dim", None) or h // heads
    return [(heads * hd, h), (kv * hd, h), (kv * hd, h), (h, heads * hd),
            (inter, h), (inter, h), (h, inter)]


def key(config, threads: int) -> str:
    text = (f"{VERSION}|{cpu_identity()}|{torch.__version__}|{torch.backends.cpu.get_cpu_capability()}"
            f"|{shapes(config)}|{config.num_hidden_layers}|{threads}|{int4.available()}|{QUALITY}")
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _int8(out: int, inp: int, g: torch.Generator) -> Int8Linear:
    q = torch.randint(-127, 128, (out, inp), dtype=torch.int8, generator=g)
    return Int8Linear(q, torch.rand(out, generator=g) * 1e-2 + 1e-3, None)


def _int4(out: int, inp: int, g: torch.Generator) -> Int4Linear:
    q = torch.randint(0, 16, (out, inp), dtype=torch.uint8, generator=g)
    sz = torch.stack([torch.rand(inp // int4.GROUP, out, generator=g) * 1e-2 + 1e-3,
                      torch.zeros(inp // int4.GROUP, out)], -1).bfloat16()
    return Int4Linear(int4._pack(q), sz, None)


def _time(fn, repeats: int = REPEATS) -> float:
    fn()  # warm: first-touch page faults, kernel dispatch
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def _layers(fmt: str, config, count: int, g: torch.Generator) -> list:
    make = _int4 if fmt == "int4" else _int8
    usable = [s for s in shapes(config) if fmt == "int8" or (s[0] % int4.BLOCK == 0 and s[1] % int4.GROUP == 0)]
    # A shape int4 cannot take stays int8 in the int4 model: time it as such.
    return [make(o, i, g) if (o, i) in usable else _int8(o, i, g)
            for _ in range(count) for o, i in shapes(config)]


def eligible(quality: dict | None = None) -> list[str]:
    quality = QUALITY if quality is None else quality
    formats = ["int8"] + (["int4"] if int4.available() else [])
    return [f for f in formats if f == "int8" or (quality.get(f) or 0) >= MIN_AGREEMENT]


@torch.inference_mode()
def calibrate(config, threads: int, formats: list[str] | None = None,
              layers: int | None = None) -> Calibration:
    """Time the candidates (see the module docstring) with `threads` threads in this thread."""
    started = time.perf_counter()
    torch.set_num_threads(threads)
    formats = eligible() if formats is None else formats
    count = layers or config.num_hidden_layers
    g = torch.Generator().manual_seed(0)
    result = Calibration(precision="int8", prefill="kernel", threads=threads,
                         quality={f: QUALITY.get(f) for f in ("int8", "int4")})
    for fmt in formats:
        stack = _layers(fmt, config, count if len(formats) > 1 else 2, g)
        ones = {n: torch.randn(1, n, generator=g) for n in {l.in_features for l in stack}}

        def decode():
            for layer in stack:
                layer(ones[layer.in_features])

        if len(formats) > 1:
            result.decode_ms[fmt] = round(_time(decode), 2)
        per_layer = len(shapes(config))
        few = stack[:2 * per_layer]  # two layers: a prompt's matmul is compute bound
        for plan_name, dtype in (("kernel", None), ("fp32", torch.float32)):
            figures = {}
            for rows in PROMPT_ROWS:
                plan = Prefill(1, dtype) if dtype is not None else Prefill(1 << 30, None)
                for layer in few:
                    layer.prefill = plan
                xs = {n: torch.randn(rows, n, generator=g) for n in {l.in_features for l in few}}
                figures[str(rows)] = round(_time(lambda: [l(xs[l.in_features]) for l in few], 3), 2)
            result.prompt_ms[f"{fmt} {plan_name}"] = figures
        del stack, few
    result.precision = (min(result.decode_ms, key=result.decode_ms.get) if result.decode_ms
                        else formats[0])
    kernel, fp32 = (result.prompt_ms[f"{result.precision} {p}"] for p in ("kernel", "fp32"))
    small, large = (str(r) for r in PROMPT_ROWS)
    if fp32[small] < kernel[small]:
        result.prefill = f"fp32 from {PROMPT_ROWS[0] // 2} rows"
    elif fp32[large] < kernel[large]:
        result.prefill = f"fp32 from {PROMPT_ROWS[1] // 2} rows"
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def cached_or_measured(config, threads: int, cache_file: Path, on_measure=None) -> Calibration:
    """The calibration for this CPU, torch, model shape and thread count: from `cache_file`
    when it holds one, else measured now (after `on_measure()`) and written there."""
    k = key(config, threads)
    try:
        saved = json.loads(Path(cache_file).read_text(encoding="utf-8"))
        if isinstance(saved, dict) and isinstance(saved.get(k), dict):
            return Calibration(**saved[k])
    except (OSError, ValueError, TypeError):
        saved = {}
    if on_measure is not None:
        on_measure()
    result = calibrate(config, threads)
    log.info("Calibrated in %.1f s: %s", result.seconds, result.summary())
    try:
        saved = saved if isinstance(saved, dict) else {}
        saved[k] = asdict(result)
        cache_file = Path(cache_file)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.name + ".tmp")
        try:
            tmp.write_text(json.dumps(saved, indent=1), encoding="utf-8")
            tmp.replace(cache_file)
        finally:
            tmp.unlink(missing_ok=True)  # no partial file left (a full disk)
    except OSError as exc:  # read-only or full: the next start measures again
        log.warning("Could not write %s: %s", cache_file, exc)
    return result
