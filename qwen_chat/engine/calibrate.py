"""Which kernels run this model fastest on this CPU: measured once, at the first start.

The fastest path differs between CPUs (on an AVX2 laptop, an AVX-512 EPYC and an AMX Xeon the
winners differ), so `precision: auto` does not fix one. `calibrate` times, with random weights
of the model's own layer shapes and the thread count the model will use:

* decode (one row through every decoder layer's products and lm_head, as in a real step: more
  weights than any CPU cache holds, each read once), for each candidate that passes the quality
  gate: int8 weights on the weight-only kernel (`_weight_int8pack_mm`, bf16 activations), int8
  weights on fbgemm's int8 GEMM with two-digit activations (digits.py; q/k/v and gate/up fused,
  as the decoder runs them), and int4 layers (while int4 fails the gate, it is not timed);
* prompts (48 rows: a typical message; 512: a pasted page) through two layers: the weight-only
  kernel itself against its weights dequantized into a scratch buffer and a float32 matmul
  (quality with fp32 prompts and int8 decode: 95.3% agreement, KL 0.0053), and the digits
  kernel (which runs prompts too: its int8 weights are only kept in fbgemm's packed form).

It keeps the fastest decode candidate among those that pass the quality gate (`QUALITY`: top-1
agreement with fp32 of at least 95%, measured by bench/quality.py on SmolLM2-135M-Instruct and
checked in CI by tests/test_calibrate.py and tests/test_precision.py), and for the weight-only
kernel the fastest prompt path.

The result is cached in the cache folder, keyed by the CPU (model name and instruction sets),
torch's version, the model's shapes and the thread count: a later start reads it (no timing).
A bf16 prompt path is not a candidate: with int8 weights it gave 94.4% agreement (bar 95%).
"""

from __future__ import annotations

import hashlib
import json
import os
import logging
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import digits, int4
from .digits import DigitsLinear
from .int4 import Int4Linear
from .quantized import Int8Linear, Prefill

log = logging.getLogger(__name__)

VERSION = 2  # bump when what is timed, or how, changes (invalidates cached choices)
MIN_AGREEMENT = 0.95
DIGITS = "int8 digits"  # int8 weights on fbgemm with two-digit activations (digits.py)
# bench/quality.py, SmolLM2-135M-Instruct, 54 prompts, 864 positions, top-1 agreement with fp32
# (int4 on the model with its input features permuted: `--scramble`, see bench/quality.py).
QUALITY = {"int8": 0.956, DIGITS: 0.954, "int4": 0.728}
PROMPT_ROWS = (48, 512)
REPEATS = 5


@dataclass
class Calibration:
    """The choice and the figures behind it (milliseconds)."""
    precision: str  # the weights' format: "int8" or "int4"
    prefill: str  # "kernel", "fp32 from N rows", or "digits"
    decode_ms: dict[str, float] = field(default_factory=dict)  # candidate -> one decode pass
    prompt_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # "int8 fp32" -> rows -> ms
    quality: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0
    threads: int = 1
    kernel: str = "weight-only"  # for int8 weights: "weight-only" or "digits"

    def plan(self) -> Prefill:
        """The prompt path of the weight-only kernel's layers (none are left with digits)."""
        if self.prefill in ("kernel", "digits"):
            return Prefill(1 << 30, None)
        return Prefill(int(self.prefill.rsplit(" ", 2)[1]), torch.float32)

    def summary(self) -> str:
        """E.g. "int8 digits (a token's layers and lm_head: int8 31.9 ms, int8 digits 19.6 ms;
        prompts: digits, measured here)": the System panel's precision."""
        chosen = DIGITS if self.kernel == "digits" else self.precision
        decode = ", ".join(f"{k} {v:.1f} ms" for k, v in self.decode_ms.items())
        decode = (f"a token's layers and lm_head: {decode}" if decode
                  else "the only kernel passing the quality gate")
        return f"{chosen} ({decode}; prompts: {self.prefill}, measured here)"


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
            f"|{shapes(config)}|{config.num_hidden_layers}|{config.vocab_size}|{threads}"
            f"|{int4.available()}|{digits.digit_format()}|{QUALITY}")
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _random_int8(out: int, inp: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.randint(-127, 128, (out, inp), dtype=torch.int8, generator=g)
    return q, torch.rand(out, generator=g) * 1e-2 + 1e-3


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


class _Weights:
    """Random int8 weights of the model's shapes, made once and shared by the candidates."""

    def __init__(self, config, count: int, g: torch.Generator) -> None:
        self.layers = [[_random_int8(o, i, g) for o, i in shapes(config)] for _ in range(count)]
        self.head = _random_int8(config.vocab_size, config.hidden_size, g)
        self.g = g

    def stack(self, candidate: str, count: int | None = None) -> list:
        """The products one decode step runs, in order, for `candidate` (lm_head last)."""
        fmt = digits.digit_format()
        out = []
        for layer in self.layers[:count]:
            if candidate == DIGITS:
                q, k, v, o, gate, up, down = layer
                for group in ((q, k, v), (o,), (gate, up), (down,)):
                    out.append(DigitsLinear(torch.cat([w for w, _ in group]),
                                            torch.cat([s for _, s in group]), None, fmt))
            else:
                for w, s in layer:
                    if candidate == "int4" and w.shape[0] % int4.BLOCK == 0 and w.shape[1] % int4.GROUP == 0:
                        out.append(_int4(*w.shape, self.g))
                    else:  # int8, and what int4 cannot take stays int8 in the int4 model
                        out.append(Int8Linear(w, s, None))
        if count is None:
            out.append(DigitsLinear(*self.head, None, fmt) if candidate == DIGITS
                       else Int8Linear(*self.head, None))
        return out


def eligible(quality: dict | None = None) -> list[str]:
    """The decode candidates that pass the quality gate and run on this CPU and torch."""
    quality = QUALITY if quality is None else quality
    names = ["int8"] + ([DIGITS] if digits.digit_format() is not None else [])
    names += ["int4"] if int4.available() else []
    return [n for n in names if (quality.get(n) or 0) >= MIN_AGREEMENT]


def _prompt_figures(layers: list, plan: Prefill | None, g: torch.Generator) -> dict[str, float]:
    figures = {}
    for rows in PROMPT_ROWS:
        if plan is not None:
            for layer in layers:
                layer.prefill = plan
        xs = {n: torch.randn(rows, n, generator=g) for n in {l.in_features for l in layers}}
        figures[str(rows)] = round(_time(lambda: [l(xs[l.in_features]) for l in layers], 3), 2)
    return figures


@torch.inference_mode()
def calibrate(config, threads: int, candidates: list[str] | None = None,
              layers: int | None = None) -> Calibration:
    """Time the candidates (see the module docstring) with `threads` threads in this thread."""
    started = time.perf_counter()
    torch.set_num_threads(threads)
    candidates = eligible() if candidates is None else candidates
    g = torch.Generator().manual_seed(0)
    weights = _Weights(config, layers or config.num_hidden_layers, g)
    result = Calibration(precision="int8", prefill="kernel", threads=threads,
                         quality={c: QUALITY.get(c) for c in ("int8", DIGITS, "int4")})
    for candidate in candidates:
        if len(candidates) > 1:
            stack = weights.stack(candidate)
            ones = {n: torch.randn(1, n, generator=g) for n in {l.in_features for l in stack}}
            result.decode_ms[candidate] = round(
                _time(lambda: [layer(ones[layer.in_features]) for layer in stack]), 2)
            del stack
        few = weights.stack(candidate, 2)  # two layers: a prompt's matmul is compute bound
        if candidate == DIGITS:
            result.prompt_ms[DIGITS] = _prompt_figures(few, None, g)
        else:
            for plan_name, dtype in (("kernel", None), ("fp32", torch.float32)):
                plan = Prefill(1, dtype) if dtype is not None else Prefill(1 << 30, None)
                result.prompt_ms[f"{candidate} {plan_name}"] = _prompt_figures(few, plan, g)
        del few
    chosen = (min(result.decode_ms, key=result.decode_ms.get) if result.decode_ms
              else candidates[0])
    if chosen == DIGITS:
        result.precision, result.kernel, result.prefill = "int8", "digits", "digits"
    else:
        result.precision = chosen
        kernel, fp32 = (result.prompt_ms[f"{chosen} {p}"] for p in ("kernel", "fp32"))
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
        tmp = cache_file.with_name(f"{cache_file.name}.tmp-{os.getpid()}")  # one per writer
        try:
            tmp.write_text(json.dumps(saved, indent=1), encoding="utf-8")
            tmp.replace(cache_file)
        finally:
            tmp.unlink(missing_ok=True)  # no partial file left (a full disk)
    except OSError as exc:  # read-only or full: the next start measures again
        log.warning("Could not write %s: %s", cache_file, exc)
    return result
