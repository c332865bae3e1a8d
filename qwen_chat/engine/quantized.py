"""Weight-only int8 layers, and what every quantized layer shares: the prefill plan and scratch.

Why weight-only int8 with ``torch._weight_int8pack_mm``: decoding one token reads every weight
once, so it is memory bound; int8 weights read 4x fewer bytes than fp32 (measured ~2.4x faster
decode on 2 AVX2 cores). It is PyTorch-native and maintained (the aten kernel behind torchao's
int8 weight-only CPU path), unlike ``torch.ao.quantization.quantize_dynamic`` (deprecated).
Weight-only keeps activations unquantized, so activation outliers cannot hurt quality. Rejected
after measuring (bench/quality.py on SmolLM2-135M-Instruct): fbgemm's dynamic W8A8 was 2.4x
faster on lm_head but its top-1 agreement fell to 81.9%.

Pitfalls handled here:
* ``_weight_int8pack_mm`` is only fast with bf16 activations (fp32 input takes a ~10x slower
  path): each int8 layer casts its input to bf16 and its output back to float32.
* It silently returns wrong results (or crashes) when in_features is not a multiple of 8: such
  layers stay float32 (see `int8_ok`).
* The int kernels are gemv kernels: over a prompt's many rows they are slower than a real matmul
  (Intel Xeon with AMX, Qwen2.5-0.5B's 24 layers, 200 rows: int8 kernel 2.0 s, weights
  dequantized into a scratch buffer then a bf16 matmul (AMX) 0.6 s, fp32 sgemm 1.3 s; with
  AVX-512 on an EPYC the int8 kernel won at every size up to 2,048 rows against sgemm). So each
  quantized layer follows a `Prefill` plan: from `rows` rows on, dequantize and run a `dtype`
  matmul. Which plan is fastest depends on the CPU: calibrate.py measures it;
  `default_prefill()` is the plan used without a measurement.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CLIP_CANDIDATES = (1.0, 0.97, 0.94, 0.9, 0.85, 0.8)  # fractions of a row's absmax tried as its range
SCRATCH_MAX = 16 * 1024 * 1024  # elements dequantized at once; bigger layers go in row chunks
CHUNK_ROWS = 8192  # rows quantized at a time: bounds the temporaries for a 151936-row lm_head
_scratch = threading.local()


@dataclass(frozen=True)
class Prefill:
    """How a quantized layer multiplies `rows` rows or more: dequantize its weights into a
    reused scratch buffer and run a `dtype` matmul (oneDNN: AMX or AVX512-BF16 for bfloat16,
    sgemm for float32). Fewer rows, or dtype None, use the layer's int kernel."""
    rows: int
    dtype: torch.dtype | None

    @property
    def name(self) -> str:
        return "kernel" if self.dtype is None else str(self.dtype).replace("torch.", "")


PREFILL_DTYPES = {"kernel": None, "fp32": torch.float32, "bf16": torch.bfloat16}


def default_prefill() -> Prefill:
    """Without a calibration: fp32 sgemm from 256 rows with AVX2 (measured: a 4864 x 896 layer
    over 512 rows 34 vs 45 ms); with AVX-512 the int kernel (it won on the EPYC measured)."""
    avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    return Prefill(4096 if avx512 else 256, torch.float32)


def scratch(numel: int, dtype: torch.dtype, slot: str = "weight") -> torch.Tensor:
    """Per-thread buffer reused by every layer's dequantization (no page faults)."""
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    buf = bufs.get((slot, dtype))
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
            buf = bufs[(slot, dtype)] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


def chunked_matmul(rows: torch.Tensor, out_features: int, in_features: int, dtype: torch.dtype,
                   dequantize) -> torch.Tensor:
    """rows @ W.T for a quantized W, where `dequantize(start, stop, dtype)` returns W[start:stop]
    in `dtype` (in a scratch buffer); at most SCRATCH_MAX weights are dequantized at once."""
    step = max(64, SCRATCH_MAX // in_features // 64 * 64)  # whole int4 blocks of 64 rows
    x = rows.to(dtype)
    if step >= out_features:
        return F.linear(x, dequantize(0, out_features, dtype)).float()
    y = torch.empty(rows.shape[0], out_features, dtype=torch.float32)
    for start in range(0, out_features, step):
        stop = min(out_features, start + step)
        y[:, start:stop] = F.linear(x, dequantize(start, stop, dtype))
    return y


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: returns (int8 [N, K], float32 scale [N]) with w ~= q * scale.

    Each row's scale is the one of CLIP_CANDIDATES x absmax / 127 with the least squared error:
    clipping a rare outlier weight buys finer steps for all the others. Measured by
    bench/quality.py on SmolLM2 (864 positions): top-1 agreement 94.7% with plain absmax, 95.7%.
    """
    w = weight.detach()
    q = torch.empty(w.shape, dtype=torch.int8)
    scale = torch.empty(w.shape[0], dtype=torch.float32)
    for start in range(0, w.shape[0], CHUNK_ROWS):
        chunk = w[start:start + CHUNK_ROWS].to(torch.float32, copy=True)  # never edit w
        amax = chunk.abs().amax(1)
        amax = torch.where(amax > 0, amax, torch.ones_like(amax))  # all-zero rows stay zero
        best, best_err = amax / 127.0, None
        for factor in CLIP_CANDIDATES:
            s = amax * (factor / 127.0)
            err = (chunk.div(s[:, None]).round_().clamp_(-127, 127).mul_(s[:, None]) - chunk).square_().sum(1)
            if best_err is None:
                best, best_err = s, err
            else:
                better = err < best_err
                best, best_err = torch.where(better, s, best), torch.minimum(err, best_err)
        q[start:start + CHUNK_ROWS] = chunk.div_(best[:, None]).round_().clamp_(-127, 127)
        scale[start:start + CHUNK_ROWS] = best
    return q, scale


def int8_ok(linear: nn.Linear) -> bool:
    return linear.in_features % 8 == 0  # the int8 kernel's requirement (see the docstring)


class Int8Linear(nn.Module):
    """Linear with int8 weights (per-output-channel scales); float32 in, float32 out."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.prefill = default_prefill()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale.float())
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        return cls(*quantize_rows(linear.weight), linear.bias)

    def dequantize(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """W[start:stop] in `dtype`, in this thread's scratch buffer (q is exact in bf16)."""
        out = scratch((stop - start) * self.in_features, dtype).view(stop - start, self.in_features)
        scale = self.scale_bf16 if dtype == torch.bfloat16 else self.scale
        return out.copy_(self.qweight[start:stop]).mul_(scale[start:stop, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, plan = x.reshape(-1, self.in_features), self.prefill
        if plan.dtype is not None and rows.shape[0] >= plan.rows:  # a prompt: dequantize + matmul
            y = chunked_matmul(rows, self.out_features, self.in_features, plan.dtype, self.dequantize)
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
