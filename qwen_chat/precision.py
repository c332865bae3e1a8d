"""Weight precision for CPU inference: fp32, bf16, or weight-only int8 (the measured winner).

Why weight-only int8 with ``torch._weight_int8pack_mm`` (measured on Qwen2.5-0.5B's shape, 2 AVX2
cores, see the precision report): decoding one token reads every weight once, so it is memory
bound; int8 weights read 4x fewer bytes than fp32 and decode ~2.4x faster. It is PyTorch-native and
maintained (the aten kernel behind torchao's int8 weight-only CPU path), unlike
``torch.ao.quantization.quantize_dynamic`` (deprecated, its qint8 tensors are slated for removal).
Weight-only keeps activations unquantized, so activation outliers cannot hurt quality.

Pitfalls handled here:
* ``_weight_int8pack_mm`` is only fast with bf16 activations (fp32 input takes a ~10x slower path),
  so each int8 layer casts its input to bf16 and its output back to float32.
* It is 2x slower than fp32 sgemm for many rows (prefill), so from ``PREFILL_ROWS`` rows on we
  dequantize into a reused scratch buffer and use fp32 sgemm instead: prefill stays at fp32 speed.
* It silently returns wrong results (or crashes) when in_features is not a multiple of 8: such
  layers stay float32.
* The lm_head (vocab x hidden, the biggest matmul at decode) is tied to the embedding: both now
  read one int8 table with per-row scales, which stores the pair in a quarter of fp32's bytes.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "int8")
AUTO_CPU = "int8"  # the measured winner on CPU (see the module docstring)
CODE_VERSION = 1  # bump when the int8 format or quantization recipe changes (invalidates caches)
PREFILL_ROWS = 32  # from this many rows on, dequantize and use fp32 sgemm (faster than int8 gemv)
SCRATCH_MAX = 16 * 1024 * 1024  # biggest layer (elements) dequantized on prefill; lm_head never is
_CHUNK_ROWS = 8192  # rows quantized at a time: bounds the temporaries for the 151936-row lm_head
_scratch = threading.local()


def _scratch_buffer(numel: int) -> torch.Tensor:
    """Per-thread float32 buffer reused by every layer's dequantization (avoids page faults)."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < numel:
        buf = _scratch.buf = torch.empty(numel, dtype=torch.float32)
    return buf[:numel]


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: returns (int8 [N, K], float32 scale [N]) with w ~= q * scale."""
    w = weight.detach()
    q = torch.empty(w.shape, dtype=torch.int8)
    scale = torch.empty(w.shape[0], dtype=torch.float32)
    for start in range(0, w.shape[0], _CHUNK_ROWS):
        chunk = w[start:start + _CHUNK_ROWS].to(torch.float32, copy=True)  # never edit w
        s = chunk.abs().amax(1) / 127.0
        s = torch.where(s > 0, s, torch.ones_like(s))  # all-zero rows (e.g. padding) stay zero
        q[start:start + _CHUNK_ROWS] = chunk.div_(s[:, None]).round_().clamp_(-127, 127)
        scale[start:start + _CHUNK_ROWS] = s
    return q, scale


class Int8Linear(nn.Module):
    """Linear with int8 weights (per-output-channel scales); float32 in, float32 out."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale.float())
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        return cls(*quantize_rows(linear.weight), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        n = self.qweight.numel()
        if rows.shape[0] >= PREFILL_ROWS and n <= SCRATCH_MAX:  # prefill: fp32 sgemm wins
            w = torch.mul(self.qweight, self.scale[:, None], out=_scratch_buffer(n).view(self.qweight.shape))
            y = F.linear(rows.float(), w, self.bias)
        else:  # decode: int8 gemv reads 4x fewer bytes (fast path needs bf16 activations)
            y = torch._weight_int8pack_mm(rows.to(torch.bfloat16), self.qweight, self.scale_bf16).float()
            if self.bias is not None:
                y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Embedding(nn.Module):
    """Embedding lookup from an int8 table with per-row scales (may share lm_head's tensors)."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale.float())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.qweight[ids].float() * self.scale[ids].unsqueeze(-1)


def _is_int8(model: nn.Module) -> bool:
    return any(isinstance(m, (Int8Linear, Int8Embedding)) for m in model.modules())


def _targets(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, Linear) for every Linear the int8 kernel handles correctly."""
    return [(parent, name, child) for parent in model.modules()
            for name, child in parent.named_children()
            if isinstance(child, nn.Linear) and child.in_features % 8 == 0]


def _install(model: nn.Module, tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    """Swap Linears (and the input embedding) for int8 modules built from `tensors` by name."""
    names = {id(m): n for n, m in model.named_modules()}
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = isinstance(emb, nn.Embedding) and head is not None and head.weight is emb.weight
    for parent, attr, linear in _targets(model):
        key = f"{names[id(parent)]}.{attr}".lstrip(".")
        setattr(parent, attr, Int8Linear(*tensors[key], linear.bias))
    if isinstance(emb, nn.Embedding) and "<embedding>" in tensors:
        new_head = model.get_output_embeddings()
        source = ((new_head.qweight, new_head.scale)
                  if tied and isinstance(new_head, Int8Linear) else tensors["<embedding>"])
        model.set_input_embeddings(Int8Embedding(*source))
    model.config.tie_word_embeddings = False  # nothing left to re-tie: never copy fp32 back
    return model


def _quantize_tensors(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Quantize every target Linear (and the embedding unless it is lm_head's tied weight)."""
    names = {id(m): n for n, m in model.named_modules()}
    out = {f"{names[id(p)]}.{a}".lstrip("."): quantize_rows(lin.weight) for p, a, lin in _targets(model)}
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if isinstance(emb, nn.Embedding) and emb.embedding_dim % 8 == 0:
        tied = head is not None and head.weight is emb.weight and isinstance(head, nn.Linear)
        out["<embedding>"] = out[names[id(head)]] if tied else quantize_rows(emb.weight)
    return out


def resolve(model: nn.Module, precision: str) -> str:
    """Validate `precision` and turn "auto" into the measured winner for the model's device."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return AUTO_CPU if on_cpu and hasattr(torch, "_weight_int8pack_mm") else "fp32"


def apply_precision(model: nn.Module, precision: str) -> tuple[nn.Module, str]:
    """Convert `model` in place to `precision`; returns (model, precision actually used).

    "fp32" leaves a float32 model untouched; "bf16" casts it (slow prefill on CPUs without
    AVX-512 BF16); "int8" swaps Linears and the embedding for int8 modules; "auto" picks int8 on CPU.
    `model.generate` keeps working, with or without a passed-in DynamicCache.
    """
    used = resolve(model, precision)
    if _is_int8(model):
        if used != "int8":
            raise ValueError(f"The model is already int8: it cannot be turned into {used}.")
        return model, used
    if used == "bf16":
        model.to(torch.bfloat16)
    elif used == "fp32":
        if any(p.dtype != torch.float32 for p in model.parameters()):
            model.to(torch.float32)
    else:
        with torch.no_grad():
            _install(model, _quantize_tensors(model))
    return model, used


def cache_key(model: nn.Module, precision: str) -> str:
    """Hash of config, precision, code and torch versions, plus a sample of every weight."""
    h = hashlib.sha256(f"{precision}|{CODE_VERSION}|{torch.__version__}|".encode())
    h.update(model.config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 256)][:256].float().contiguous()
            h.update(name.encode() + str(tuple(p.shape)).encode() + sample.numpy().tobytes())
    return h.hexdigest()


def load_or_quantize(model: nn.Module, precision: str, cache_file: Path) -> tuple[nn.Module, str]:
    """Like apply_precision, but int8 tensors come from `cache_file` when it matches this model.

    Quantizing the 0.5B model takes seconds; reloading the saved int8 tensors (memory-mapped) is
    several times faster. A cache whose key (config, precision, code/torch version, weight sample)
    differs, or that cannot be read, is rebuilt. The file is written atomically.
    """
    used = resolve(model, precision)
    if used != "int8" or _is_int8(model):
        return apply_precision(model, used)
    cache_file = Path(cache_file)
    key = cache_key(model, used)
    try:
        saved = torch.load(cache_file, mmap=True, weights_only=True)
        if saved.get("key") == key:
            with torch.no_grad():
                return _install(model, saved["tensors"]), used
    except (OSError, RuntimeError, ValueError, KeyError, AttributeError, EOFError):
        pass  # missing, unreadable or stale: quantize and rewrite it below
    with torch.no_grad():
        tensors = _quantize_tensors(model)
        _install(model, tensors)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f"{cache_file.name}.tmp-{os.getpid()}")
    try:
        torch.save({"key": key, "tensors": tensors}, tmp)
        os.replace(tmp, cache_file)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only cache folder only costs the next start time
    return model, used
