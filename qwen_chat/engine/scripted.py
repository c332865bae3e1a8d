"""The decoder layers of a `digits` model as one TorchScript function: no Python between ops.

Why: with its products on fbgemm (digits.py), a decode step of Qwen2.5-0.5B is about 16 ms of
weight reads and some 2,400 small operations between them (norms, digits, rotary, attention,
residuals). Called from Python, each costs a few microseconds of interpreter and binding on top
of its work: 11-15 ms a step on a 2-core AMD EPYC. Run by TorchScript's interpreter, the same
operations cost about 5 ms less (a step 27-28 -> 22-23 ms, measured in one sitting). It needs no
C++ compiler (torch.compile does: most Windows and many Linux computers have none) and runs
fbgemm's op as it is.

TorchScript is deprecated in PyTorch 2.13 but present and working; torch is pinned
(requirements.txt), and a model without `digits` layers, or a torch without TorchScript, runs
decoder.py's Python loop (the same arithmetic, tests/test_decoder.py compares them).

The functions mirror decoder.py's (`_rms`, `_rotate`, `attend`): keys and values are written into
buffers with room (decoder.py sizes them), the attention reads their first `past + new` tokens.
"""

from __future__ import annotations

import warnings
from typing import List, Optional

import torch
import torch.nn.functional as F

try:
    Packed = torch.classes.quantized.LinearPackedParamsBase
except (AttributeError, RuntimeError):  # a torch without quantized ops: nothing to script
    Packed = object


def digits_linear(x: torch.Tensor, packed: Packed, extremes: torch.Tensor, D: float,
                  reduce_range: bool, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """digits.DigitsLinear's product: x (any leading dims, float32) times the packed int8 rows."""
    rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[0]
    step = rows.abs().amax(1, keepdim=True).clamp_min_(1e-30).div_(D)
    scaled = rows / step
    high = scaled.round()
    low = scaled.sub_(high).mul_(2.0 * D)
    out = torch.ops.quantized.linear_dynamic(torch.cat([high, low, extremes]), packed, reduce_range)
    y = torch.add(out[:n], out[n:2 * n], alpha=1.0 / (2.0 * D)).mul_(step)
    if bias is not None:
        y = y + bias
    return y.view(list(x.shape[:-1]) + [y.shape[-1]])


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2RMSNorm / LlamaRMSNorm in float32 (aten's fused kernel: one op)."""
    return torch.rms_norm(x, [x.shape[-1]], weight, eps)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, x * cos + rotate_half(x) * sin, where rotate_half(x) is x rolled by
    half with its first half negated: `sin` comes with that sign folded in (signed_sin)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin)


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], -1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
           scale: float, pack_rows: int) -> torch.Tensor:
    batch, heads, new, dim = q.shape
    groups = heads // k.shape[1]
    if new <= pack_rows:
        packed = q.reshape(batch, heads // groups, groups * new, dim)
        m = mask
        if m is not None:
            m = m.expand(batch, groups, new, m.shape[-1]).reshape(batch, 1, groups * new, -1)
        out = F.scaled_dot_product_attention(packed, k, v, attn_mask=m, scale=scale)
        out = out.reshape(batch, heads, new, dim)
    else:
        if groups > 1:
            k = k.repeat_interleave(groups, 1)
            v = v.repeat_interleave(groups, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(batch, new, heads * dim)


def layers(h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Optional[torch.Tensor],
           keys: List[torch.Tensor], values: List[torch.Tensor], past: int,
           packed: List[Packed], biases: List[Optional[torch.Tensor]], extremes: List[torch.Tensor],
           norms: List[torch.Tensor], eps: List[float], D: float, reduce_range: bool,
           heads: int, kv: int, dim: int, scale: float, pack_rows: int) -> torch.Tensor:
    """Every decoder layer over `h` (batch x new x hidden); per layer i, packed[4i:4i+4] are
    q/k/v, o, gate/up and down, norms[2i:2i+2] its two norms."""
    batch, new = h.shape[0], h.shape[1]
    end = past + new
    for i in range(len(keys)):
        j = 4 * i
        x = digits_linear(rms(h, norms[2 * i], eps[2 * i]), packed[j], extremes[j], D,
                          reduce_range, biases[j]).view(batch, new, heads + 2 * kv, dim)
        qk = rotate(x[:, :, :heads + kv], cos, sin)
        keys[i][:, :, past:end] = qk[:, :, heads:].transpose(1, 2)
        values[i][:, :, past:end] = x[:, :, heads + kv:].transpose(1, 2)
        out = attend(qk[:, :, :heads].transpose(1, 2).to(keys[i].dtype), keys[i][:, :, :end],
                     values[i][:, :, :end], mask, scale, pack_rows)
        h = h + digits_linear(out.to(h.dtype), packed[j + 1], extremes[j + 1], D, reduce_range,
                              biases[j + 1])
        y = digits_linear(rms(h, norms[2 * i + 1], eps[2 * i + 1]), packed[j + 2], extremes[j + 2],
                          D, reduce_range, biases[j + 2])
        half = y.shape[-1] // 2
        h = h + digits_linear(F.silu(y[:, :, :half]) * y[:, :, half:], packed[j + 3],
                              extremes[j + 3], D, reduce_range, biases[j + 3])
    return h


def script(fn):
    """`fn` as TorchScript, or None where this torch has none (the Python loop runs instead)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated.*")
            return torch.jit.script(fn)
    except Exception:  # noqa: BLE001 - any failure to script just means the Python path
        return None
