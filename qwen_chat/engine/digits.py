"""int8 weights times activations written as two int8 digits: fbgemm's int8 GEMM, exactly.

Why: a decode step reads every weight once, and on these CPUs the weight-only int8 kernel
(`torch._weight_int8pack_mm`) is bound by its arithmetic, not by memory: it widens each weight to
float32 and multiplies in float32 (16 per instruction). fbgemm's int8 GEMM (behind PyTorch's
`quantized::linear_dynamic`) multiplies int8 by int8 into int32 (VNNI: 64 per instruction) and
streams the weights at the memory's speed. Measured on a 2-core AMD EPYC (AVX-512, VNNI), the 24
layers of Qwen2.5-0.5B at one token: 14-15 ms against 22 ms; lm_head 5 ms against 10 ms.

But one int8 activation per token loses what matters: its scale follows the largest value, and
the many small ones round to nothing (SmolLM2: 86.6% top-1 agreement with fp32, the bar is 95%).
So each activation row x is written in two int8 digits, q1 + q2 / (2D), in steps of
max|x| / D: x = s * (q1 + q2 / (2D)) within s / (4 D^2), about 15 bits, finer than the bf16 the
weight-only kernel rounds to (95.5% agreement, KL 0.0044; weight-only int8: 95.3%, 0.0052).
Both digits go through the GEMM as rows of one call (more rows are free: the weights are read
once), and a third row holding the int8 extremes pins fbgemm's own quantization of its input to
scale 1, so the digits reach it unchanged and the int32 sums are exact.

Where the CPU multiplies bytes by pairs into 16 bits (vpmaddubsw: AVX2 and AVX-512 without VNNI),
a pair of full-range products saturates: there the digits use 7 bits (D = 63) and fbgemm's
`reduce_range`. Which of the two is exact is checked on this machine (`digit_format`), never
assumed; if neither is (or there is no fbgemm), the weight-only kernel stays.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .scripted import digits_linear

log = logging.getLogger(__name__)

TINY = 1e-30  # a row of zeros keeps a non-zero step


@dataclass(frozen=True)
class DigitFormat:
    """D: a digit's largest magnitude; reduce_range: fbgemm's 7-bit inputs."""
    D: int
    reduce_range: bool

    @property
    def extremes(self) -> tuple[int, int]:
        return (-64, 63) if self.reduce_range else (-128, 127)


FORMATS = (DigitFormat(127, False), DigitFormat(63, True))


@contextlib.contextmanager
def fbgemm_engine():
    """torch's quantized engine set to fbgemm meanwhile (a process-wide setting: threads that
    pack at once are put inside one of these, so that none restores it under another)."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _pack(qweight: torch.Tensor, scale: torch.Tensor):
    """fbgemm's packed form of int8 rows with per-row scales (a copy; `qweight` may go)."""
    with warnings.catch_warnings():
        # PyTorch announces the end of quantized tensors; torch is pinned (requirements.txt)
        # and digit_format() falls back to the weight-only kernel where these ops are gone.
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
        rows = qweight.shape[0]
        wq = torch._make_per_channel_quantized_tensor(
            qweight.contiguous(), scale.double(), torch.zeros(rows, dtype=torch.long), 0)
        with fbgemm_engine():
            return torch.ops.quantized.linear_prepack(wq, None)


class DigitsLinear(nn.Module):
    """A Linear with int8 weights (per-row scales) run by fbgemm on two-digit activations.
    float32 in, float32 out; any number of rows (a prompt's rows each get their own step)."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 fmt: DigitFormat) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.fmt = fmt
        self.packed = _pack(qweight, scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        extremes = torch.zeros(1, self.in_features)
        extremes[0, 0], extremes[0, 1] = fmt.extremes
        self.register_buffer("extremes", extremes, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            x = x.float()
        return digits_linear(x, self.packed, self.extremes, float(self.fmt.D),
                             self.fmt.reduce_range, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int8 x two {8 if self.fmt.D == 127 else 7}-bit digits (fbgemm)")


def _exact(fmt: DigitFormat) -> bool:
    """Does fbgemm give the exact products of int8 weights and digits of `fmt` here? The worst
    case for 16-bit pair sums: every weight and input at its extreme, of both signs."""
    g = torch.Generator().manual_seed(0)
    k, n = 256, 32
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    q[0], q[1] = 127, -127  # rows of extremes
    layer = DigitsLinear(q, torch.full((n,), 0.5), None, fmt)
    x = torch.randn(4, k, generator=g)
    x[0], x[1] = 1.0, -1.0  # every input at the top of the range
    x[2, ::2], x[2, 1::2] = 1.0, -1.0
    got = layer(x).double()
    want = x.double() @ (q.double() * 0.5).t()
    # The two digits stand for x within max|x| / (4 D^2) per element.
    bound = 0.5 * 127 * k * x.abs().amax(1, keepdim=True).double() / (4 * fmt.D ** 2) + 1e-3
    return bool(((got - want).abs() <= bound).all())


@functools.lru_cache(maxsize=1)
def digit_format() -> DigitFormat | None:
    """The digit format that is exact on this CPU, or None (no fbgemm, or no exact format)."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return None
    for fmt in FORMATS:
        try:
            if _exact(fmt):
                return fmt
        except (RuntimeError, AttributeError, NotImplementedError) as exc:
            log.info("fbgemm int8 GEMM unusable here (%s): weight-only int8 instead", exc)
            return None
    return None
