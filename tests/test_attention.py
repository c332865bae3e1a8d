"""The decode attention (qwen_chat/attention.py) gives what transformers' SDPA attention gives."""

from __future__ import annotations

import types

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from qwen_chat.engine import attention


@pytest.mark.parametrize("tokens", [1, 5, attention.PACK_ROWS + 1])  # decode, a turn, a document
@pytest.mark.parametrize("masked", [False, True])  # no cache or one reply; after a cache, or a batch
def test_packed_attention_equals_transformers_sdpa(tokens, masked):
    torch.manual_seed(0)
    module = types.SimpleNamespace(num_key_value_groups=7, is_causal=True, training=False)
    batch, context = 2, 40 + tokens
    query = torch.randn(batch, 14, tokens, 64)
    key, value = torch.randn(batch, 2, context, 64), torch.randn(batch, 2, context, 64)
    mask = None
    if masked:  # left padding in row 0, causal over the new tokens
        mask = torch.ones(batch, 1, tokens, context, dtype=torch.bool).tril(context - tokens)
        mask[0, :, :, :3] = False
    ours, _ = attention.attention(module, query, key, value, mask, scaling=0.125)
    theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.125)
    assert ours.shape == theirs.shape == (batch, tokens, 14, 64)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_loaded_models_attend_with_it(tiny_model, tiny_dir):
    """A Qwen2/Llama-shaped model runs decoder.py's forward, which packs its query heads the
    same way; a model of another shape keeps transformers' forward with this attention."""
    from transformers import AutoModelForCausalLM

    from qwen_chat.engine import precision

    model, _ = tiny_model
    assert "decoder" in vars(model)
    other = AutoModelForCausalLM.from_pretrained(tiny_dir)
    other.config.use_sliding_window = True  # a shape decoder.py leaves to transformers
    precision.use_kernels(other)
    assert "decoder" not in vars(other) and other.config._attn_implementation == attention.NAME
