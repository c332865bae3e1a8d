"""Weight precision for CPU inference: fp32, bf16, or weight-only int8 (the measured winner).

Why weight-only int8 with ``torch._weight_int8pack_mm`` (measured on Qwen2.5-0.5B's shape, 2 AVX2
cores, see the precision report): decoding one token reads every weight once, so it is memory
bound; int8 weights read 4x fewer bytes than fp32 and decode ~2.4x faster. It is PyTorch-native and
maintained (the aten kernel behind torchao's int8 weight-only CPU path), unlike
``torch.ao.quantization.quantize_dynamic`` (deprecated, its qint8 tensors are slated for removal).
Weight-only keeps activations unquantized, so activation outliers cannot hurt quality.

Rejected after measuring (bench/quality.py on SmolLM2-135M-Instruct, the int8 bar is 95% top-1
agreement): fbgemm's dynamic W8A8 (``quantized::linear_dynamic``, int8 activations) is 2.4x faster
on lm_head at decode and 2.6x faster at prefill, but even with per-token activation scales the
agreement fell to 81.9% (KL 0.127 nats); W8A8 on lm_head alone already cost 3 points.

Pitfalls handled here:
* ``_weight_int8pack_mm`` is only fast with bf16 activations (fp32 input takes a ~10x slower path),
  so each int8 layer casts its input to bf16 and its output back to float32.
* For prompts of ``PREFILL_ROWS`` rows or more we dequantize into a reused scratch buffer and use
  fp32 sgemm; below it the int8 kernel is the faster of the two. Where that crossover lies depends
  on the CPU (Qwen2.5-0.5B's layer shapes): with AVX-512 the int8 kernel won at every size
  measured, up to 2,048 rows; with AVX2 only (measured here by restricting every library to it:
  ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``) sgemm wins from
  about 200 rows: a 4864 x 896 layer over 512 rows took 34 ms vs 45 ms, over 128 rows 12.8 vs 11.8.
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

from ..config import PRECISIONS  # one list: config.yaml is checked against it too

AUTO_CPU = "int8"  # the measured winner on CPU (see the module docstring)
CODE_VERSION = 2  # bump when the int8 format or quantization recipe changes (invalidates caches)
# From this many rows on, dequantize + fp32 sgemm instead of the int8 kernel (see above). Measured
# with AVX-512 and one OpenMP pool (see engine.py): 43 rows 136 vs 414 ms for the whole model, 128:
# 413 vs 760, 1,024: 3.96 vs 5.15 s, 2,048: 8.4 vs 10.9 s.
# Not measured on ARM (Apple silicon): it gets AVX2's crossover.
PREFILL_ROWS = 4096 if torch.backends.cpu.get_cpu_capability() == "AVX512" else 256
SCRATCH_MAX = 16 * 1024 * 1024  # biggest layer (elements) dequantized on prefill; lm_head never is
CLIP_CANDIDATES = (1.0, 0.97, 0.94, 0.9, 0.85, 0.8)  # fractions of a row's absmax tried as its range
_CHUNK_ROWS = 8192  # rows quantized at a time: bounds the temporaries for the 151936-row lm_head
_scratch = threading.local()


def _scratch_buffer(numel: int) -> torch.Tensor:
    """Per-thread float32 buffer reused by every layer's dequantization (avoids page faults)."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
            buf = _scratch.buf = torch.empty(numel, dtype=torch.float32)
    return buf[:numel]


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: returns (int8 [N, K], float32 scale [N]) with w ~= q * scale.

    Each row's scale is the one of CLIP_CANDIDATES x absmax / 127 with the least squared error:
    clipping a rare outlier weight buys finer steps for all the others. Measured by
    bench/quality.py on SmolLM2 (864 positions): top-1 agreement 94.7% with plain absmax, 95.7%.
    """
    w = weight.detach()
    q = torch.empty(w.shape, dtype=torch.int8)
    scale = torch.empty(w.shape[0], dtype=torch.float32)
    for start in range(0, w.shape[0], _CHUNK_ROWS):
        chunk = w[start:start + _CHUNK_ROWS].to(torch.float32, copy=True)  # never edit w
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
        q[start:start + _CHUNK_ROWS] = chunk.div_(best[:, None]).round_().clamp_(-127, 127)
        scale[start:start + _CHUNK_ROWS] = best
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
        if rows.shape[0] >= PREFILL_ROWS and n <= SCRATCH_MAX:  # a long prompt (per CPU): sgemm
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
    """(parent, attribute, Linear) for every Linear the int8 kernels handle correctly."""
    return [(parent, name, child) for parent in model.modules()
            for name, child in parent.named_children()
            if isinstance(child, nn.Linear) and child.in_features % 8 == 0]


def _key(names: dict[int, str], parent: nn.Module, attr: str) -> str:
    return f"{names[id(parent)]}.{attr}".lstrip(".")


def _install(model: nn.Module, tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    """Swap Linears (and the input embedding) for int8 modules built from `tensors` by name."""
    names = {id(m): n for n, m in model.named_modules()}
    emb = model.get_input_embeddings()
    for parent, attr, linear in _targets(model):
        setattr(parent, attr, Int8Linear(*tensors[_key(names, parent, attr)], linear.bias))
    if isinstance(emb, nn.Embedding) and "<embedding>" in tensors:
        model.set_input_embeddings(Int8Embedding(*tensors["<embedding>"]))
    model.config.tie_word_embeddings = False  # nothing left to re-tie: never copy fp32 back
    return model


def _quantize_tensors(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Quantize every target Linear and the embedding (one shared table when tied to lm_head)."""
    names = {id(m): n for n, m in model.named_modules()}
    out = {_key(names, p, a): quantize_rows(lin.weight) for p, a, lin in _targets(model)}
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if isinstance(emb, nn.Embedding) and emb.embedding_dim % 8 == 0:
        tied = head is not None and head.weight is emb.weight and names[id(head)] in out
        out["<embedding>"] = out[names[id(head)]] if tied else quantize_rows(emb.weight)
    return out


def _float_rest(model: nn.Module) -> None:
    """Cast what int8 left in another float dtype (norms, biases) to float32, int8 modules aside."""
    for module in model.modules():
        if isinstance(module, (Int8Linear, Int8Embedding)):
            continue
        for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if t is not None and t.is_floating_point() and t.dtype != torch.float32:
                new = t.detach().float()
                if isinstance(t, nn.Parameter):
                    module._parameters[name] = nn.Parameter(new, requires_grad=False)
                else:
                    module._buffers[name] = new


def _to_int8(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Quantize `model` in place (int8 modules, the rest in float32); returns the int8 tensors."""
    with torch.no_grad():
        tensors = _quantize_tensors(model)
        _install(model, tensors)
        _float_rest(model)
    return tensors


def resolve(precision: str) -> str:
    """Validate `precision` and turn "auto" into the measured winner on this CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    return AUTO_CPU if hasattr(torch, "_weight_int8pack_mm") else "fp32"


def apply_precision(model: nn.Module, precision: str) -> tuple[nn.Module, str]:
    """Convert an in-memory `model` in place to `precision`; returns (model, precision used).

    "fp32" leaves a float32 model untouched; "bf16" casts it (slow prefill on CPUs without
    AVX-512 BF16); "int8" swaps Linears and the embedding for int8 modules; "auto" picks int8.
    `model.generate` keeps working, with or without a passed-in DynamicCache.
    """
    used = resolve(precision)
    if _is_int8(model):
        if used != "int8":
            raise ValueError(f"The model is already int8: it cannot be turned into {used}.")
        return model, used
    if used == "bf16":
        model.to(torch.bfloat16)
    elif used == "int8":
        _to_int8(model)
    elif any(p.dtype != torch.float32 for p in model.parameters()):
        model.float()
    return model, used


def fingerprint(folder: Path) -> str:
    """Cache key: int8 recipe version, torch version, and each weight/config file's identity.

    Files are identified by resolved name, size and modification time (Hub snapshots link to
    content-addressed blobs), so a changed checkpoint is never served from a stale cache.
    """
    h = hashlib.sha256(f"int8|{CODE_VERSION}|{torch.__version__}|".encode())
    for f in sorted(Path(folder).iterdir()):
        if f.suffix in (".safetensors", ".bin", ".json", ".pt") and f.is_file():
            st = f.resolve().stat()
            h.update(f"{f.name}|{f.resolve().name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _from_cache(folder: Path, saved: dict) -> nn.Module | None:
    """Build the int8 model from cached tensors without ever materializing float weights.

    Parameters are created on the meta device (buffers such as RoPE frequencies are computed for
    real), int8 modules are installed from the cache and the remaining float tensors (norms,
    biases) are assigned from it. Returns None if anything is left unmaterialized.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        _install(model, saved["tensors"])
        model.load_state_dict(saved["rest"], strict=False, assign=True)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        return None
    try:
        model.generation_config = GenerationConfig.from_pretrained(folder, local_files_only=True)
    except OSError:
        pass  # no generation_config.json: the defaults from the config stand
    return model.eval()


def load_int8(folder: Path, cache_file: Path, on_quantize=None) -> nn.Module:
    """Load the model in `folder` as int8, from `cache_file` when it matches (see fingerprint).

    A first start loads the checkpoint in its own dtype (bf16 for Qwen: half of fp32's memory),
    quantizes it (seconds) and writes the cache atomically; later starts read only the cache
    (memory-mapped), which is faster and keeps peak memory near the int8 model's size. A cache
    that is missing, stale or unreadable is rebuilt (after calling `on_quantize()`, if given).
    """
    from transformers import AutoModelForCausalLM

    cache_file, key = Path(cache_file), fingerprint(folder)
    try:
        saved = torch.load(cache_file, mmap=True, weights_only=True)
        if saved.get("key") == key:
            model = _from_cache(folder, saved)
            if model is not None:
                return model
    except (OSError, RuntimeError, ValueError, KeyError, AttributeError, EOFError):
        pass  # missing, unreadable or stale: quantize and rewrite it below
    if on_quantize is not None:
        on_quantize()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto", local_files_only=True).eval()
    tensors = _to_int8(model)
    rest = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f"{cache_file.name}.tmp-{os.getpid()}")
    try:
        torch.save({"key": key, "tensors": tensors, "rest": rest}, tmp)
        os.replace(tmp, cache_file)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only cache folder only costs the next start time
    return model
