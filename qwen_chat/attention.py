"""Attention for CPU decoding: grouped-query attention without copying or broadcasting keys.

Qwen2.5-0.5B has 14 query heads sharing 2 key/value heads. To decode one token, transformers' SDPA
path passes `enable_gqa=True` to torch whenever there is no mask (one reply at a time), and torch's
CPU kernel then runs each query head against its shared key/value head separately. Folding the 7
query heads of a group into 7 query rows of that group (transformers' own `pack_gqa`, which it
uses only when there is a mask) makes it one small matrix product per key/value head: measured
on this machine, per layer, 0.023 vs 0.073 ms at 300 tokens of context, 0.107 vs 0.218 ms at
2,048, the same result. Everything else (prompts, other models) goes to transformers' SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import pack_gqa, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "qwen_chat_sdpa"


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
              value: torch.Tensor, attention_mask: torch.Tensor | None, dropout: float = 0.0,
              scaling: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    groups = getattr(module, "num_key_value_groups", 1)
    if (query.shape[2] != 1 or groups <= 1 or dropout or kwargs.get("position_bias") is not None
            or kwargs.get("softcap") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    out = F.scaled_dot_product_attention(pack_gqa(query, groups), key, value,
                                         attn_mask=pack_gqa(attention_mask, groups), scale=scaling)
    # (batch, kv heads, group, dim) -> (batch, 1 token, heads, dim), as sdpa_attention_forward gives
    return out.reshape(out.shape[0], -1, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def use(model: torch.nn.Module) -> None:
    """Make `model` attend with `attention` (when it attends with SDPA, the default)."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
