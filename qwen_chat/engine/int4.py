"""Weight-only int4 with torch's packed CPU kernel (``aten._weight_int4pack_mm_for_cpu``).

Why: a decode step streams every weight from memory once; int4 reads half of int8's bytes
(measured on an Intel Xeon with AVX-512, Qwen2.5-0.5B's 24 layers and lm_head, 2 threads:
int8 41.3 ms per token, int4 with groups of 32 24.4 ms).

The kernel's convention (checked by `available()` on this CPU before int4 is ever used):
w = (q - 8) * scale + zero with q in 0..15, one (scale, zero) pair in bf16 per group of `group`
consecutive input features of a row, ``scales_and_zeros`` shaped [K / group, N, 2]; activations
in bf16. Its limits: N a multiple of 16, group 32, 64, 128 or 256 dividing K. Here int4 layers
also need N to be a multiple of 64 (whole blocks of every packed layout); others stay int8.

Each group's range is asymmetric (its min and max, not +-absmax: a zero point costs nothing in
the kernel) and chosen by least squared error among INT4_CLIPS fractions of that range, as the
int8 rows are (quantized.py).

The packed layout is private to the kernel and differs by CPU capability (AVX-512 packs blocks of
64 rows, AVX2 32, ...). A prompt's many rows are faster as a real matmul of dequantized weights
(see quantized.py), so `dequantize` unpacks it: `layout()` finds which of the known layouts this
build uses by packing a probe, and int4 is not offered (`available()` is False) if none matches.
The cache of packed tensors is therefore keyed by the CPU capability too (precision.fingerprint).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .quantized import CHUNK_ROWS, chunked_matmul, default_prefill, scratch

GROUP = 32  # measured: group 128 decodes ~6% faster but lost 18 points of top-1 agreement
GROUPS = (32, 64, 128, 256)  # what the kernel accepts
BLOCK = 64  # int4 layers need out_features % BLOCK == 0
INT4_CLIPS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)  # fractions of a group's range tried
_LAYOUTS = ((64, "halves"), (32, "halves"), (32, "pairs"), (64, "pairs"), (16, "pairs"))


def _pack(q: torch.Tensor) -> torch.Tensor:
    """Pack q (0..15, [N, K]) for the kernel, CHUNK_ROWS rows (whole blocks) at a time."""
    return torch.cat([torch._convert_weight_to_int4pack_for_cpu(q[s:s + CHUNK_ROWS].to(torch.int32), 1)
                      for s in range(0, q.shape[0], CHUNK_ROWS)])


def _unpack_t(packed: torch.Tensor, in_features: int, block: int, style: str,
              out: torch.Tensor) -> torch.Tensor:
    """q of `packed` rows (whole blocks) transposed into `out` (uint8 [K, rows])."""
    nb, half = packed.shape[0] // block, block // 2
    p = scratch(packed.numel(), torch.uint8, "int4-bytes").view(in_features, nb, half)
    p.copy_(packed.view(nb, in_features, half).permute(1, 0, 2))  # bytes are cheapest to move
    view = out.view(in_features, nb, block) if style == "halves" else out.view(in_features, nb, half, 2)
    lo, hi = (view[..., :half], view[..., half:]) if style == "halves" else (view[..., 0], view[..., 1])
    torch.bitwise_and(p, 15, out=lo)
    torch.bitwise_right_shift(p, 4, out=hi)
    return out


@functools.cache
def layout() -> tuple[int, str] | None:
    """(rows per block, nibble order) of this build's packed int4 format, or None."""
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return None
    q = torch.randint(0, 16, (2 * BLOCK, 64), generator=torch.Generator().manual_seed(0))
    try:
        packed = _pack(q)
    except (RuntimeError, AttributeError):
        return None
    for block, style in _LAYOUTS:
        got = _unpack_t(packed, 64, block, style, torch.empty(64, 2 * BLOCK, dtype=torch.uint8))
        if torch.equal(got.t(), q.to(torch.uint8)):
            return block, style
    return None


@functools.cache
def available() -> bool:
    """The kernel exists, its packed layout is known and it computes the convention above."""
    if layout() is None:
        return False
    lin = nn.Linear(64, BLOCK, bias=False)
    layer = Int4Linear.from_linear(lin)
    x = torch.randn(3, 64)
    with torch.no_grad():
        want = x @ layer.dequantize(0, BLOCK, torch.float32).t()
        got = layer(x)
    return bool((got - want).norm() <= 0.02 * want.norm())


def int4_ok(linear: nn.Linear, group: int = GROUP) -> bool:
    return linear.out_features % BLOCK == 0 and linear.in_features % group == 0


def quantize_groups(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per group: returns (packed uint8 [N, K / 2], bf16 [K / group, N, 2])."""
    assert group in GROUPS and weight.shape[1] % group == 0 and weight.shape[0] % BLOCK == 0
    n, k = weight.shape
    q = torch.empty(n, k, dtype=torch.uint8)
    sz = torch.empty(k // group, n, 2, dtype=torch.bfloat16)
    for start in range(0, n, CHUNK_ROWS):
        w = weight[start:start + CHUNK_ROWS].detach().to(torch.float32).view(-1, k // group, group)
        lo0, hi0 = w.amin(-1), w.amax(-1)
        best = None
        for factor in INT4_CLIPS:
            lo, span = lo0 * factor, (hi0 - lo0) * factor
            flat = span <= 0  # a constant group: q = 8 gives back zero, the group's value
            s = torch.where(flat, lo.abs() + 1e-12, span / 15).bfloat16().float()
            z = torch.where(flat, lo, lo + 8 * s).bfloat16().float()  # rounded as the kernel reads them
            qq = ((w - z[..., None]) / s[..., None] + 8).round_().clamp_(0, 15)
            err = (qq.sub(8).mul_(s[..., None]).add_(z[..., None]) - w).square_().sum(-1)
            if best is None:
                best = [err, s, z, qq]
            else:
                better = err < best[0]
                best = [torch.minimum(err, best[0]), torch.where(better, s, best[1]),
                        torch.where(better, z, best[2]), torch.where(better[..., None], qq, best[3])]
        q[start:start + CHUNK_ROWS] = best[3].view(-1, k)
        sz[:, start:start + CHUNK_ROWS] = torch.stack([best[1], best[2]], -1).transpose(0, 1)
    return _pack(q), sz


class _Int4Weights(nn.Module):
    """Packed int4 weights [N, K] and their scales and zeros, dequantized on demand."""

    def _init_weights(self, packed: torch.Tensor, scale_zero: torch.Tensor) -> None:
        self.rows, self.cols = packed.shape[0], packed.shape[1] * 2
        self.group = self.cols // scale_zero.shape[0]
        self.register_buffer("packed", packed)
        self.register_buffer("scale_zero", scale_zero)
        self._affine: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    def _scale_offset(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero - 8 * scale) as [K / group, 1, N] in `dtype`: w = q * scale + offset."""
        if dtype not in self._affine:
            s, z = self.scale_zero[..., 0].float(), self.scale_zero[..., 1].float()
            self._affine[dtype] = (s[:, None].to(dtype), (z - 8 * s)[:, None].to(dtype))
        return self._affine[dtype]

    def dequantize(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """W[start:stop] ([rows, K], a transposed view of this thread's scratch) in `dtype`."""
        block, style = layout()
        n, k = stop - start, self.cols
        q = _unpack_t(self.packed[start:stop], k, block, style,
                      scratch(n * k, torch.uint8, "int4-q").view(k, n))
        w = scratch(n * k, dtype).view(k // self.group, self.group, n)
        w.copy_(q.view(k // self.group, self.group, n))
        scale, offset = self._scale_offset(dtype)
        torch.addcmul(offset[..., start:stop], w, scale[..., start:stop], out=w)
        return w.view(k, n).t()


class Int4Linear(_Int4Weights):
    """Linear with packed int4 weights (see the module docstring); float32 in, float32 out."""

    def __init__(self, packed: torch.Tensor, scale_zero: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self._init_weights(packed, scale_zero)
        self.out_features, self.in_features = self.rows, self.cols
        self.prefill = default_prefill()
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: int = GROUP) -> "Int4Linear":
        return cls(*quantize_groups(linear.weight, group), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, plan = x.reshape(-1, self.in_features), self.prefill
        if plan.dtype is not None and rows.shape[0] >= plan.rows:  # a prompt: dequantize + matmul
            y = chunked_matmul(rows, self.out_features, self.in_features, plan.dtype, self.dequantize)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                rows.to(torch.bfloat16), self.packed, self.group, self.scale_zero).float()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 g{self.group}"


class Int4Embedding(_Int4Weights):
    """Embedding lookup from lm_head's packed int4 table (tied weights: one copy for both)."""

    def __init__(self, packed: torch.Tensor, scale_zero: torch.Tensor):
        super().__init__()
        self._init_weights(packed, scale_zero)
        self.num_embeddings, self.embedding_dim = self.rows, self.cols

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        block, style = layout()
        half, flat = block // 2, ids.reshape(-1)
        byte = flat % block % half if style == "halves" else flat % block // 2
        high = flat % block >= half if style == "halves" else flat % 2 == 1
        raw = self.packed.view(-1, self.cols, half)[flat // block, :, byte]  # [T, K] bytes
        q = torch.where(high[:, None], raw >> 4, raw & 15).float()
        s, z = self.scale_zero[:, flat, 0].float().t(), self.scale_zero[:, flat, 1].float().t()
        w = (q.view(len(flat), -1, self.group) - 8) * s[..., None] + z[..., None]
        return w.view(*ids.shape, self.cols)
