"""The forward pass of Llama-shaped decoders (Qwen2, Llama, SmolLM), written for CPU decode steps.

Why not transformers' own forward: a decode step of Qwen2.5-0.5B is 24 layers of small work
between the weight reads, and transformers' modeling code spends about 11 ms of a 41 ms step
(AMD EPYC, 2 threads) on its generality: a mask built per step, a cache that concatenates, casts,
seven projections per layer, kwargs threaded through every call. This does the same arithmetic
with the fewest operations: q/k/v and gate/up as one product each (when the layers are
`DigitsLinear`, fused as they are built), rotary embedding of q and k in one go, keys and values
appended in place into spare room, no mask at all for a single reply's decode step, and the
grouped query heads packed as rows of their key/value head (attention.py's measurement).

When every product is a `DigitsLinear`, the layers run as one TorchScript function
(scripted.py: no Python between operations); otherwise as the Python loop below, which does the
same with any Linear (float, weight-only int8, int4).

It is installed as the model's `forward` (same arguments as transformers': `input_ids`,
`attention_mask`, `position_ids`, `cache`/`past_key_values`, `logits_to_keep`, `use_cache`), so
the engine, `generate()` and the quality bench all run through it; tests/test_decoder.py checks
it against transformers' forward. Models of another shape keep transformers' forward.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from . import scripted
from .attention import PACK_ROWS
from .digits import DigitFormat, DigitsLinear, fbgemm_engine
from .quantized import Int8Linear
from .scripted import attend, rms, rotate

MODEL_TYPES = ("qwen2", "llama")
ROOM = 256  # tokens of spare room a cache grows by (keys and values written in place)
# New tokens per pass through the layers: a 2,048-token prompt in one pass raised peak memory
# by 0.15 GB (its activations, twice the rows in digits); in parts of 256 it stays flat, and
# their attention is the packed kind (attention.PACK_ROWS).
CHUNK = 256
# Threads that pack int8 layers for fbgemm at start (each layer's packing is one thread's work):
# the 97 products of Qwen2.5-0.5B took about 1.9 s one after the other, about 1 s two at a time.
# They end when the packing is done, taking their OpenMP pools with them (see scheduler.py).
PACK_THREADS = 2
_OUTPUT_CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def supports(model: nn.Module) -> bool:
    """A decoder this forward computes exactly as transformers does."""
    config = model.config
    inner = getattr(model, "model", None)
    return (getattr(config, "model_type", None) in MODEL_TYPES
            and getattr(config, "hidden_act", None) == "silu"
            and not getattr(config, "use_sliding_window", False)
            and not getattr(config, "mlp_bias", False)
            and getattr(config, "pretraining_tp", 1) == 1
            and inner is not None and hasattr(inner, "rotary_emb")
            and inner.norm.weight.dtype == torch.float32  # bf16 keeps transformers' casts
            and all(hasattr(layer, "self_attn") and hasattr(layer, "mlp")
                    for layer in getattr(inner, "layers", [None])))


def _fuse(parts: list[nn.Module], fmt: DigitFormat | None, release=None) -> tuple[nn.Module, ...]:
    """One product for `parts` (same input): a DigitsLinear of their stacked int8 rows when
    `fmt` is given and all are int8 (then `release(tensors)` is told their int8 rows are no
    longer needed); else the parts as they are."""
    if fmt is None or not all(isinstance(p, Int8Linear) for p in parts):
        return tuple(parts)
    biases = [p.bias for p in parts]
    bias = None if all(b is None for b in biases) else torch.cat(
        [b if b is not None else torch.zeros(p.out_features) for p, b in zip(parts, biases)])
    fused = DigitsLinear(torch.cat([p.qweight for p in parts]) if len(parts) > 1 else parts[0].qweight,
                         torch.cat([p.scale for p in parts]), bias, fmt)
    if release is not None:
        release([p.qweight for p in parts])
    return (fused,)


def _fuse_all(groups: list[list[nn.Module]], fmt: DigitFormat | None, release=None) -> list[tuple[nn.Module, ...]]:
    """_fuse of each group, PACK_THREADS at a time where there are int8 layers to pack."""
    if fmt is None:
        return [tuple(parts) for parts in groups]
    with fbgemm_engine(), ThreadPoolExecutor(PACK_THREADS, thread_name_prefix="qwen-chat-pack") as pool:
        return list(pool.map(lambda parts: _fuse(parts, fmt, release), groups))


def _project(parts: tuple[nn.Module, ...], x: torch.Tensor) -> torch.Tensor:
    return parts[0](x) if len(parts) == 1 else torch.cat([p(x) for p in parts], -1)


def room(layer, batch: int, heads: int, dim: int, past: int, end: int,
         dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Buffers holding `layer`'s first `past` keys and values with room up to `end` tokens: the
    ones of its last growth while its tensors are still their views (a cache is only ever used
    by one reply: kvcache.py copies shared ones), else new ones of `dtype` with ROOM tokens to
    spare. The caller writes tokens past..end into them, then `keep`s them."""
    buf_k, buf_v = getattr(layer, "room_keys", None), getattr(layer, "room_values", None)
    old_k, old_v = (layer.keys, layer.values) if layer.is_initialized else (None, None)
    if (buf_k is not None and old_k is not None and old_k.dim() == 4 and buf_k.shape[0] == batch
            and buf_k.shape[-2] >= end and old_k.shape[-2] == past
            and old_k.data_ptr() == buf_k.data_ptr() and old_v.data_ptr() == buf_v.data_ptr()):
        return buf_k, buf_v
    buf_k = torch.empty(batch, heads, end + ROOM, dim, dtype=dtype)
    buf_v = torch.empty(batch, heads, end + ROOM, dim, dtype=dtype)
    if past:
        buf_k[:, :, :past] = old_k
        buf_v[:, :, :past] = old_v
    layer.room_keys, layer.room_values = buf_k, buf_v
    return buf_k, buf_v


def keep(layer, buf_k: torch.Tensor, buf_v: torch.Tensor, end: int) -> None:
    """The layer's keys and values are now the first `end` tokens of its buffers."""
    layer.keys, layer.values = buf_k[:, :, :end], buf_v[:, :, :end]
    layer.is_initialized, layer.device = True, buf_k.device


def _mask(attention_mask: torch.Tensor | None, batch: int, new: int, past: int) -> torch.Tensor | None:
    """Which keys each new token sees (bool, batch x 1 x new x keys), or None when it is all
    of them (one new token, no padding). A padding token sees itself, so nothing is NaN."""
    total = past + new
    valid = None
    if attention_mask is not None and attention_mask.dim() == 2:
        valid = attention_mask[:, -total:].bool()
        if bool(valid.all()):
            valid = None
    if new == 1 and valid is None:
        return None
    keys = torch.arange(total)
    queries = torch.arange(past, total)
    mask = (keys[None, :] <= queries[:, None])[None, None].expand(batch, 1, new, total)
    if valid is not None:
        own = torch.zeros(new, total, dtype=torch.bool)
        own[torch.arange(new), queries] = True
        mask = (mask & valid[:, None, None, :]) | own[None, None]
    return mask


@functools.lru_cache(maxsize=1)
def _scripted_layers():
    return scripted.script(scripted.layers)


class Decoder:
    """The forward pass of `model` (see the module docstring); `install` makes it the model's."""

    def __init__(self, model: nn.Module, digits: DigitFormat | None = None, release=None,
                 kv_dtype: torch.dtype = torch.float32) -> None:
        config, inner = model.config, model.model
        self.config, self.model = config, model
        self.kv_dtype = kv_dtype  # of the keys and values it caches (see install)
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim ** -0.5
        self.embed, self.rotary, self.norm = inner.embed_tokens, inner.rotary_emb, inner.norm
        groups = []  # each layer's four products (q/k/v and gate/up fused once), then lm_head
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv, gate_up = attn._modules.get("qkv_proj"), mlp._modules.get("gate_up_proj")
            groups += [[qkv] if qkv is not None else [attn.q_proj, attn.k_proj, attn.v_proj],
                       [attn.o_proj],
                       [gate_up] if gate_up is not None else [mlp.gate_proj, mlp.up_proj],
                       [mlp.down_proj]]
        products = _fuse_all([*groups, [model.lm_head]], digits, release)
        self.layers = [(layer.input_layernorm, *products[4 * i:4 * i + 2],
                        layer.post_attention_layernorm, *products[4 * i + 2:4 * i + 4])
                       for i, layer in enumerate(inner.layers)]
        self.head = products[-1][0]
        self.script_args = self._script_args()

    def _script_args(self) -> tuple | None:
        """scripted.layers' arguments when every product is one DigitsLinear (else None)."""
        products = [p for _, qkv, o, _, gu, down in self.layers for p in (qkv, o, gu, down)]
        if not all(len(p) == 1 and isinstance(p[0], DigitsLinear) for p in products):
            return None
        if _scripted_layers() is None:
            return None
        fmt = products[0][0].fmt
        if any(p[0].fmt != fmt for p in products):
            return None
        norms = [n for n1, _, _, n2, _, _ in self.layers for n in (n1, n2)]
        return ([p[0].packed for p in products], [p[0].bias for p in products],
                [p[0].extremes for p in products], [n.weight for n in norms],
                [float(n.variance_epsilon) for n in norms], float(fmt.D), fmt.reduce_range,
                self.heads, self.kv_heads, self.head_dim, self.scale, PACK_ROWS)

    def install(self) -> None:
        """Make this the model's forward. A fused product replaces the projections it stands
        for in the module tree, so that their int8 tensors are not kept twice."""
        model = self.model
        for layer, (_, qkv, o, _, gate_up, down) in zip(model.model.layers, self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            for parent, names, fused, new_name in (
                    (attn, ("q_proj", "k_proj", "v_proj"), qkv, "qkv_proj"),
                    (attn, ("o_proj",), o, "o_proj"),
                    (mlp, ("gate_proj", "up_proj"), gate_up, "gate_up_proj"),
                    (mlp, ("down_proj",), down, "down_proj")):
                if isinstance(fused[0], DigitsLinear) and parent._modules.get(new_name) is not fused[0]:
                    for name in names:
                        parent._modules.pop(name, None)
                    setattr(parent, new_name, fused[0])
        model.lm_head = self.head
        model.forward = self.forward
        model.decoder = self
        if any(isinstance(m, DigitsLinear) for m in model.modules()):
            _own_memory(model)
            self.script_args = self._script_args()  # the norms' own copies, not the file's

    def _python_layers(self, h, cos, sin, mask, buffers, past: int) -> torch.Tensor:
        """scripted.layers for any kind of product, in Python."""
        batch, new = h.shape[:2]
        end, heads, kv, dim = past + new, self.heads, self.kv_heads, self.head_dim
        for (norm1, qkv, o, norm2, gate_up, down), (keys, values) in zip(self.layers, buffers):
            x = _project(qkv, rms(h, norm1.weight, norm1.variance_epsilon)).view(batch, new, heads + 2 * kv, dim)
            qk = rotate(x[:, :, :heads + kv], cos, sin)
            keys[:, :, past:end] = qk[:, :, heads:].transpose(1, 2)
            values[:, :, past:end] = x[:, :, heads + kv:].transpose(1, 2)
            out = attend(qk[:, :, :heads].transpose(1, 2).to(keys.dtype), keys[:, :, :end],
                         values[:, :, :end], mask, self.scale, PACK_ROWS)
            h = h + o[0](out.to(h.dtype))
            y = _project(gate_up, rms(h, norm2.weight, norm2.variance_epsilon))
            half = y.shape[-1] // 2
            h = h + down[0](F.silu(y[..., :half]) * y[..., half:])
        return h

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache=None, past_key_values=None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = True,
                logits_to_keep: int | torch.Tensor = 0, **_: object) -> CausalLMOutputWithPast:
        cache = cache if cache is not None else past_key_values
        if cache is None:
            cache = DynamicCache(config=self.config)
        while len(cache.layers) < len(self.layers):
            cache.layers.append(DynamicLayer())
        h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.float()
        batch, new = h.shape[:2]
        past = cache.get_seq_length()
        end = past + new
        if position_ids is None:
            position_ids = torch.arange(past, end).unsqueeze(0)
        cos, sin = self.rotary(h, position_ids)
        cos, sin = cos.unsqueeze(2), scripted.signed_sin(sin.unsqueeze(2))  # batch x new x 1 x dim
        mask = _mask(attention_mask, batch, new, past)
        buffers = [room(layer, batch, self.kv_heads, self.head_dim, past, end, self.kv_dtype)
                   for layer in cache.layers[:len(self.layers)]]
        chunks = []
        for start in range(0, new, CHUNK):  # a long prompt in parts: bounded activations
            stop = min(new, start + CHUNK)
            part = (h[:, start:stop], cos[:, start:stop], sin[:, start:stop],
                    None if mask is None else mask[:, :, start:stop, :past + stop])
            if self.script_args is not None:
                chunks.append(_scripted_layers()(*part, [k for k, _ in buffers], [v for _, v in buffers],
                                                 past + start, *self.script_args))
            else:
                chunks.append(self._python_layers(*part, buffers, past + start))
        h = chunks[0] if len(chunks) == 1 else torch.cat(chunks, 1)
        for layer, (keys, values) in zip(cache.layers, buffers):
            keep(layer, keys, values, end)
        h = slice_logits_to_keep(h, logits_to_keep)
        if h.shape[1]:
            logits = self.head(rms(h, self.norm.weight, self.norm.variance_epsilon))
        else:
            logits = h.new_empty(batch, 0, self.config.vocab_size)
        return CausalLMOutputWithPast(logits=logits, **{_OUTPUT_CACHE: cache if use_cache is not False else None})


def install(model: nn.Module, digits: DigitFormat | None = None, release=None,
            kv_dtype: torch.dtype = torch.float32) -> bool:
    """Give `model` this forward if it has the shape for it (True); with `digits`, its int8
    layers become DigitsLinear (q/k/v and gate/up fused; `release(tensors)` is told which
    int8 rows are packed); its cache keeps keys and values in `kv_dtype`. Else it keeps
    transformers' forward."""
    if not supports(model):
        return False
    Decoder(model, digits, release, kv_dtype).install()
    return True


def _own_memory(model: nn.Module) -> None:
    """Copy the model's remaining tensors (the embedding, norms, biases) out of the
    memory-mapped cache file they may have loaded from, so that the mapping (and the file's
    pages the int8 layers were packed from) is let go: 0.5 GB less resident with Qwen2.5-0.5B."""
    with torch.no_grad():
        for module in model.modules():
            for name, t in [*module._parameters.items(), *module._buffers.items()]:
                if t is not None:
                    copy = t.detach().clone()
                    if isinstance(t, nn.Parameter):
                        module._parameters[name] = nn.Parameter(copy, requires_grad=False)
                    else:
                        module._buffers[name] = copy
