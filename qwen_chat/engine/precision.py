"""Weight precision for CPU inference: what each name in PRECISIONS means, applied to a model.

* "fp32": the checkpoint as float32 (exact, slowest); "bf16": cast to bfloat16 (fast prompts with
  AMX or AVX512-BF16, slow decode, and ~3x slower prompts without native bf16).
* "int8": weight-only int8 for every Linear and the embedding (quantized.py).
* "int4": weight-only int4 (groups of 32) for the layers, int8 for lm_head and the embedding (one
  shared table when tied): lm_head is the one layer whose error every token sees directly
  (bench/quality.py on SmolLM2: int4 on lm_head alone cost 13 points of top-1 agreement).
* "auto": measured per machine and model by calibrate.py; `resolve` alone gives int8.

Layers a kernel cannot take stay in a wider format: int4 needs out_features % 64 == 0 and
in_features % 32 == 0 (else int8), int8 in_features % 8 == 0 (else float32).

Quantized models load from a cache of their tensors (`load_quantized`), built on the first start.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import psutil
import torch
from torch import nn

from ..config import PRECISIONS  # one list: config.yaml is checked against it too
from . import attention, decoder, digits, int4, memory
from .int4 import Int4Embedding, Int4Linear, int4_ok
from .quantized import (Int8Embedding, Int8Linear, Prefill, default_prefill, int8_ok,
                        quantize_rows)

log = logging.getLogger(__name__)

AUTO_CPU = "int8"  # without a calibration (see calibrate.py)
CACHE_MARGIN = 16 * 2**20  # bytes left free beside a cache written (torch.save adds headers)
CODE_VERSION = 3  # bump when a quantized format or recipe changes (invalidates caches)
RECIPES = {"int8": ("int8", "int8"), "int4": ("int4", "int8")}  # name: (layers, lm_head)
QUANTIZED = (Int8Linear, Int8Embedding, Int4Linear, Int4Embedding, digits.DigitsLinear)
KERNELS = ("auto", "digits", "weight-only")  # how int8 layers multiply (see use_kernels)
EMBEDDING = "<embedding>"


def _targets(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, Linear) for every Linear a kernel handles correctly."""
    return [(parent, name, child) for parent in model.modules()
            for name, child in parent.named_children()
            if isinstance(child, nn.Linear) and int8_ok(child)]


def _names(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules()}


def _key(names: dict[int, str], parent: nn.Module, attr: str) -> str:
    return f"{names[id(parent)]}.{attr}".lstrip(".")


def quantize_tensors(model: nn.Module, precision: str, pool: dict | None = None) -> dict:
    """{layer name: its quantized tensors} for `precision` (a key of RECIPES), from `model`'s
    float weights (left untouched). `pool` keeps tensors by (name, format) to share them
    between precisions (calibrate.py builds several from one checkpoint)."""
    layers, head_format = RECIPES[precision]
    pool = {} if pool is None else pool
    names, head = _names(model), model.get_output_embeddings()
    out = {}
    for parent, attr, linear in _targets(model):
        key = _key(names, parent, attr)
        fmt = head_format if linear is head else layers
        fmt = fmt if fmt == "int8" or (int4.available() and int4_ok(linear)) else "int8"
        if (key, fmt) not in pool:
            pool[key, fmt] = (int4.quantize_groups(linear.weight) if fmt == "int4"
                              else quantize_rows(linear.weight))
        out[key] = pool[key, fmt]
    emb = model.get_input_embeddings()
    if isinstance(emb, nn.Embedding) and emb.embedding_dim % 8 == 0:
        tied = head is not None and head.weight is emb.weight and names[id(head)] in out
        if tied:
            out[EMBEDDING] = out[names[id(head)]]
        else:
            if (EMBEDDING, "int8") not in pool:
                pool[EMBEDDING, "int8"] = quantize_rows(emb.weight)
            out[EMBEDDING] = pool[EMBEDDING, "int8"]
    return out


def float_tensors(model: nn.Module, tensors: dict) -> dict[str, torch.Tensor]:
    """`model`'s float tensors that `tensors` does not replace (norms, biases), as float32."""
    names = _names(model)
    replaced = {f"{k}.weight" for k in tensors if k != EMBEDDING}
    emb = model.get_input_embeddings()
    if EMBEDDING in tensors:
        replaced.add(f"{names[id(emb)]}.weight")
    return {k: v.detach().float() for k, v in model.state_dict().items()
            if v.is_floating_point() and k not in replaced}


def _is_int4(pair) -> bool:
    return pair[0].dtype == torch.uint8


def _install(model: nn.Module, tensors: dict) -> nn.Module:
    """Swap Linears (and the input embedding) for quantized modules built from `tensors`."""
    names = _names(model)
    for parent, attr, linear in _targets(model):
        pair = tensors[_key(names, parent, attr)]
        setattr(parent, attr, (Int4Linear if _is_int4(pair) else Int8Linear)(*pair, linear.bias))
    if isinstance(model.get_input_embeddings(), nn.Embedding) and EMBEDDING in tensors:
        pair = tensors[EMBEDDING]
        model.set_input_embeddings((Int4Embedding if _is_int4(pair) else Int8Embedding)(*pair))
    model.config.tie_word_embeddings = False  # nothing left to re-tie: never copy floats back
    return model


def _float_rest(model: nn.Module) -> None:
    """Cast what quantization left in another float dtype (norms, biases) to float32."""
    for module in model.modules():
        if isinstance(module, QUANTIZED):
            continue
        for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if t is not None and t.is_floating_point() and t.dtype != torch.float32:
                new = t.detach().float()
                if isinstance(t, nn.Parameter):
                    module._parameters[name] = nn.Parameter(new, requires_grad=False)
                else:
                    module._buffers[name] = new


def build_quantized(config, tensors: dict, rest: dict, generation_config=None) -> nn.Module | None:
    """A quantized model from its tensors, never materializing float weights: parameters are
    created on the meta device (buffers such as RoPE frequencies for real), quantized modules
    installed, the float rest assigned. None if anything is left unmaterialized."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        _install(model, tensors)
        model.load_state_dict(rest, strict=False, assign=True)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        return None
    if generation_config is not None:
        model.generation_config = generation_config
    return model.eval()


def set_prefill(model: nn.Module, plan: Prefill) -> None:
    """Make every quantized layer of `model` follow `plan` for prompts (see quantized.Prefill)."""
    for module in model.modules():
        if isinstance(module, (Int8Linear, Int4Linear)):
            module.prefill = plan


def resolve(precision: str) -> str:
    """Validate `precision`; "auto" gives int8 (calibrate.py measures better), an int4 name gives
    int8 where this torch build or CPU has no usable int4 kernel."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}.")
    if precision == "auto":
        return AUTO_CPU if hasattr(torch, "_weight_int8pack_mm") else "fp32"
    if precision.startswith("int4") and not int4.available():
        log.warning("precision %s: no usable int4 kernel in this torch build: int8 instead", precision)
        return "int8"
    return precision


# The keys and values a model on the digits kernel caches: bf16. A decode step reads every cached
# key and value from memory (the weights streamed in between evict them from the CPU's caches),
# so at long contexts half the bytes is time saved: a step of Qwen2.5-0.5B at 1,000 / 2,000
# tokens of context 25.3 / 25.7 ms against 26.0 / 27.7 ms in float32, no change at 300 (AMD
# EPYC, 2 threads; the same with aten restricted to AVX2), and half the memory per cached token.
# Its cost in quality, SmolLM2's top-1 agreement with fp32 (the bar: 95%): 95.3% with 8-bit and
# with 7-bit digits, against 95.4% and 95.6% with float32 ones (KL 0.0045-0.0046). The weight-only
# kernel, whose activations are bf16 already, fell to 94.9% with it: it keeps float32, as fp32
# and bf16 models do. fp16 was slower on these CPUs (no fp16 arithmetic).
DIGITS_KV_DTYPE = torch.bfloat16


def use_kernels(model: nn.Module, kernel: str = "auto", loaded_from: Path | None = None) -> str:
    """Give `model` its forward pass: decoder.py's for Llama-shaped models (else transformers'
    with attention.py's attention). Its int8 layers multiply on fbgemm with two-digit
    activations ("digits", digits.py) where that is exact on this CPU and `kernel` allows it,
    else on the weight-only kernel. Returns the kernel in use: "digits", "weight-only", or ""
    (no int8 layers). `loaded_from`: the int8 cache file the model's tensors may be mapped
    from, whose pages are handed back layer by layer as they are packed (memory.py)."""
    if kernel not in KERNELS:
        raise ValueError(f"Unknown kernel {kernel!r}: choose one of {', '.join(KERNELS)}.")
    fmt = digits.digit_format() if kernel != "weight-only" else None
    int8 = any(isinstance(m, (Int8Linear, digits.DigitsLinear)) for m in model.modules())
    release = None
    if loaded_from is not None:  # the file's mappings, read once (/proc/self/maps), not per layer
        ranges = memory.file_ranges(loaded_from)
        release = lambda ts: memory.drop_file_pages(ts, ranges)  # noqa: E731
    kv_dtype = DIGITS_KV_DTYPE if int8 and fmt is not None else torch.float32
    if not decoder.install(model, fmt if int8 else None, release, kv_dtype):
        attention.use(model)  # a model of another shape keeps transformers' forward
    if any(isinstance(m, digits.DigitsLinear) for m in model.modules()):
        model.kernel = "digits"
    else:
        model.kernel = "weight-only" if int8 else ""
    return model.kernel


def apply_precision(model: nn.Module, precision: str, kernel: str = "auto") -> tuple[nn.Module, str]:
    """Convert an in-memory `model` in place to `precision` and give it its forward pass (see
    use_kernels); returns (model, precision used). `model.generate` keeps working, with or
    without a passed-in DynamicCache."""
    used = resolve(precision)
    done = getattr(model, "quantized_as", None)
    if done is not None:
        if used != done:
            raise ValueError(f"The model is already {done}: it cannot be turned into {used}.")
        return model, used
    if used == "bf16":
        model.to(torch.bfloat16)
    elif used in RECIPES:
        with torch.no_grad():
            _install(model, quantize_tensors(model, used))
            _float_rest(model)
        model.quantized_as = used
    elif any(p.dtype != torch.float32 for p in model.parameters()):
        model.float()
    use_kernels(model, kernel)
    return model, used


def fingerprint(folder: Path, precision: str = "int8") -> str:
    """Cache key: recipe and code version, torch version and CPU capability (the int4 packed
    layout depends on it), and each weight/config file's identity (resolved name, size and
    modification time: Hub snapshots link to content-addressed blobs)."""
    h = hashlib.sha256(f"{precision}|{CODE_VERSION}|{torch.__version__}|"
                       f"{torch.backends.cpu.get_cpu_capability()}|{int4.layout()}|".encode())
    for f in sorted(Path(folder).iterdir()):
        if f.suffix in (".safetensors", ".bin", ".json", ".pt") and f.is_file():
            st = f.resolve().stat()
            h.update(f"{f.name}|{f.resolve().name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _configs(folder: Path):
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    try:
        return config, GenerationConfig.from_pretrained(folder, local_files_only=True)
    except OSError:
        return config, None  # no generation_config.json: the defaults from the config stand


def save_cache(cache_file: Path, key: str, tensors: dict, rest: dict) -> None:
    """Write the cache atomically (a temporary name, then rename) if its disk has room; a
    failed write leaves no partial file, and temporaries of processes that died half-way are
    removed. A cache not written costs only time: the next start prepares the model again."""
    cache_file = Path(cache_file)
    need = sum(t.numel() * t.element_size() for d in (tensors, rest) for t in d.values()
               if isinstance(t, torch.Tensor))
    tmp = cache_file.with_name(f"{cache_file.name}.tmp-{os.getpid()}")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        for old in cache_file.parent.glob(f"{cache_file.name}.tmp-*"):
            pid = old.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                old.unlink(missing_ok=True)
        free = shutil.disk_usage(cache_file.parent).free
        if free < need + CACHE_MARGIN:
            log.warning("Not saving the prepared model to %s: it needs %.0f MB and that disk "
                        "has %.0f MB free. It runs from memory now; the next start prepares it "
                        "again (free some space to make later starts faster).",
                        cache_file.parent, need / 2**20, free / 2**20)
            return
        torch.save({"key": key, "tensors": tensors, "rest": rest}, tmp)
        os.replace(tmp, cache_file)
    except (OSError, RuntimeError) as exc:  # disk full, read-only: only the next start is slower
        log.warning("Not saving the prepared model to %s: %s. It runs from memory now; the "
                    "next start prepares it again.", cache_file, exc)
    finally:
        tmp.unlink(missing_ok=True)


def load_cached(folder: Path, cache_file: Path, precision: str) -> nn.Module | None:
    """The quantized model from `cache_file` if it matches `folder` and `precision`, else None."""
    try:
        saved = torch.load(cache_file, mmap=True, weights_only=True)
        if saved.get("key") != fingerprint(folder, precision):
            return None
        config, generation = _configs(folder)
        model = build_quantized(config, saved["tensors"], saved["rest"], generation)
    except (OSError, RuntimeError, ValueError, KeyError, AttributeError, EOFError, TypeError):
        return None  # missing, unreadable or stale
    if model is not None:
        model.quantized_as = precision
    return model


def load_quantized(folder: Path, cache_file: Path, precision: str = "int8",
                   on_quantize=None) -> nn.Module:
    """Load the model in `folder` as `precision` (a key of RECIPES), from `cache_file` when it
    matches (see fingerprint).

    A first start loads the checkpoint in its own dtype (bf16 for Qwen: half of fp32's memory),
    quantizes it (seconds) and writes the cache; later starts read only the cache (memory-mapped),
    which is faster and keeps peak memory near the quantized model's size. A cache that is
    missing, stale or unreadable is rebuilt (after calling `on_quantize()`, if given).
    """
    from transformers import AutoModelForCausalLM

    model = load_cached(folder, cache_file, precision)
    if model is not None:
        return model
    if on_quantize is not None:
        on_quantize()
    source = AutoModelForCausalLM.from_pretrained(folder, dtype="auto", local_files_only=True).eval()
    with torch.no_grad():
        tensors = quantize_tensors(source, precision)
        rest = float_tensors(source, tensors)
    del source
    save_cache(cache_file, fingerprint(folder, precision), tensors, rest)
    config, generation = _configs(folder)
    model = build_quantized(config, tensors, rest, generation)
    model.quantized_as = precision
    return model


def prefill_of(model: nn.Module) -> Prefill | None:
    """The prompt plan `model`'s quantized layers follow (None: not quantized)."""
    return next((m.prefill for m in model.modules() if isinstance(m, (Int8Linear, Int4Linear))), None)


__all__ = ["PRECISIONS", "RECIPES", "Prefill", "default_prefill", "apply_precision", "resolve",
           "set_prefill", "prefill_of", "load_quantized", "fingerprint", "Int8Linear", "Int4Linear",
           "Int8Embedding", "Int4Embedding", "quantize_rows"]
