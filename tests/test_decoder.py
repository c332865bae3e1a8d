"""qwen_chat.engine.decoder and digits: the lean forward computes what transformers computes,
and fbgemm's int8 GEMM on two-digit activations stays within its stated error."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from qwen_chat.engine import decoder, digits, precision
from qwen_chat.engine.digits import DigitsLinear


@pytest.fixture(scope="module")
def reference(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


@pytest.fixture()
def lean(reference):
    model = copy.deepcopy(reference)
    assert decoder.install(model)
    return model


def ids(model, *shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, shape, generator=g)


@pytest.mark.parametrize("chunk", [decoder.CHUNK, 7])  # 7: prompts pass the layers in parts
def test_prompt_then_cached_prompt_then_decode_match_transformers(reference, lean, chunk, monkeypatch):
    monkeypatch.setattr(decoder, "CHUNK", chunk)
    x = ids(reference, 1, 40)
    with torch.inference_mode():
        caches = DynamicCache(config=reference.config), DynamicCache(config=reference.config)
        for part in (x[:, :30], x[:, 30:35], *[x[:, t:t + 1] for t in range(35, 40)]):
            want = reference(part, past_key_values=caches[0]).logits
            got = lean(part, past_key_values=caches[1]).logits
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert caches[1].get_seq_length() == 40
    for a, b in zip(caches[0].layers, caches[1].layers):
        torch.testing.assert_close(b.keys, a.keys, atol=1e-5, rtol=1e-5)


def test_generate_with_left_padding_matches_transformers(reference, lean):
    x = ids(reference, 3, 12)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, :5] = mask[1, :2] = 0
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, output_scores=True,
              return_dict_in_generate=True)
    with torch.inference_mode():
        want, got = reference.generate(x, **kw), lean.generate(x, **kw)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(want.scores, got.scores):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_logits_to_keep_and_no_logits(lean):
    x = ids(lean, 1, 9)
    with torch.inference_mode():
        full = lean(x).logits
        last = lean(x, logits_to_keep=1).logits
        none = lean(x, logits_to_keep=torch.tensor([], dtype=torch.long)).logits
    assert full.shape[1] == 9 and last.shape[1] == 1 and none.shape[1] == 0
    torch.testing.assert_close(last[0, -1], full[0, -1])


def test_a_copied_cache_and_its_original_grow_apart(lean):
    """Keys are appended in place into spare room: a copy (kvcache.take copies shared caches)
    and a cropped original must never write into each other."""
    x = ids(lean, 1, 20)
    with torch.inference_mode():
        cache = DynamicCache(config=lean.config)
        lean(x[:, :10], past_key_values=cache)
        copied = copy.deepcopy(cache)
        a = lean(x[:, 10:15], past_key_values=cache).logits
        cache.crop(-5)  # back to 10 tokens, then another continuation into the same room
        lean(ids(lean, 1, 5, seed=1), past_key_values=cache)
        b = lean(x[:, 10:15], past_key_values=copied).logits
        fresh = DynamicCache(config=lean.config)
        c = lean(x[:, :15], past_key_values=fresh).logits[:, 10:]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(b, c, atol=1e-5, rtol=1e-5)


def test_other_shapes_keep_transformers_forward(reference):
    other = copy.deepcopy(reference)
    other.config.use_sliding_window = True  # a shape this forward does not compute
    assert not decoder.supports(other) and not decoder.install(other)
    assert "forward" not in vars(other)
    assert not decoder.supports(copy.deepcopy(reference).to(torch.bfloat16))


@pytest.mark.skipif(digits.digit_format() is None, reason="no exact fbgemm int8 GEMM on this CPU")
@pytest.mark.parametrize("rows", [1, 3, 300])
def test_digits_linear_within_its_bound(rows):
    g = torch.Generator().manual_seed(rows)
    q = torch.randint(-127, 128, (48, 96), dtype=torch.int8, generator=g)
    scale, bias = torch.rand(48, generator=g) * 0.01, torch.randn(48, generator=g)
    layer = DigitsLinear(q, scale, bias, digits.digit_format())
    x = torch.randn(2, rows, 96, generator=g)
    x[0, 0] *= 100  # an outlier row must not coarsen the others: each row has its own step
    if rows > 1:
        x[1, 1] = 0  # an all-zero row stays exact
    want = x.double() @ (q.double() * scale.double()[:, None]).t() + bias.double()
    got = layer(x).double()
    D = digits.digit_format().D
    # each element of x is represented within max|x_row| / (4 D^2)
    bound = (x.abs().amax(-1, keepdim=True).double() / (4 * D * D)
             * (q.double().abs() * scale.double()[:, None]).sum(1) + 1e-4)
    assert got.shape == want.shape and ((got - want).abs() <= bound).all()


def test_the_digit_format_is_exact_here_or_absent():
    fmt = digits.digit_format()
    assert fmt is None or (fmt in digits.FORMATS and digits._exact(fmt))


@pytest.mark.skipif(digits.digit_format() is None, reason="no exact fbgemm int8 GEMM on this CPU")
def test_int8_digits_model_is_fused_and_close_to_fp32(reference):
    x = ids(reference, 1, 40)
    with torch.inference_mode():
        want = reference(x).logits
    model, used = precision.apply_precision(copy.deepcopy(reference), "int8")
    assert used == "int8" and model.kernel == "digits"
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert isinstance(attn.qkv_proj, DigitsLinear) and not hasattr(attn, "q_proj")
    assert isinstance(mlp.gate_up_proj, DigitsLinear) and isinstance(model.lm_head, DigitsLinear)
    with torch.inference_mode():
        got = model(x).logits
        cache = DynamicCache(config=model.config)
        model(x[:, :-1], past_key_values=cache)
        step = model(x[:, -1:], past_key_values=cache).logits
    assert (got - want).norm() / want.norm() < 0.05
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9
    torch.testing.assert_close(step[0, -1], got[0, -1], atol=1e-4, rtol=1e-4)
    assert cache.layers[0].keys.dtype == cache.layers[0].values.dtype == torch.bfloat16
    weight_only, _ = precision.apply_precision(copy.deepcopy(reference), "int8", kernel="weight-only")
    assert weight_only.kernel == "weight-only" and hasattr(weight_only.model.layers[0].self_attn, "q_proj")


@pytest.mark.skipif(digits.digit_format() is None, reason="no exact fbgemm int8 GEMM on this CPU")
def test_a_digits_model_caches_bf16_keys_and_values_close_to_float32_ones(reference):
    """Half the bytes a step reads from its cache; the weight-only kernel and a float32 model
    keep float32 ones (the weight-only kernel fell below the quality bar with bf16 ones)."""
    weight_only, _ = precision.apply_precision(copy.deepcopy(reference), "int8", kernel="weight-only")
    assert weight_only.decoder.kv_dtype == torch.float32
    model, _ = precision.apply_precision(copy.deepcopy(reference), "int8")
    assert model.decoder.kv_dtype == torch.bfloat16
    x = ids(reference, 1, 60)
    logits = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.decoder.kv_dtype = dtype
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            model(x[:, :-3], past_key_values=cache)
            steps = [model(x[:, k:k + 1], past_key_values=cache).logits[0, -1] for k in (57, 58, 59)]
        assert {layer.keys.dtype for layer in cache.layers} == {dtype}
        assert cache.layers[0].keys.shape[-2] == 60
        logits[dtype] = torch.stack(steps)
    a, b = logits[torch.float32], logits[torch.bfloat16]
    assert (b - a).norm() / a.norm() < 0.02
    assert (b.argmax(-1) == a.argmax(-1)).all()
    lean_cache = DynamicCache(config=reference.config)
    fp32 = copy.deepcopy(reference)
    decoder.install(fp32)
    with torch.inference_mode():
        fp32(x, past_key_values=lean_cache)
    assert lean_cache.layers[0].keys.dtype == torch.float32


@pytest.mark.skipif(digits.digit_format() is None, reason="no exact fbgemm int8 GEMM on this CPU")
def test_layers_packed_two_at_a_time_are_the_ones_packed_one_by_one(reference, monkeypatch):
    engine = torch.backends.quantized.engine  # process-wide: packing must put it back
    x = ids(reference, 1, 20)
    logits = []
    for threads in (1, 2):
        monkeypatch.setattr(decoder, "PACK_THREADS", threads)
        model, _ = precision.apply_precision(copy.deepcopy(reference), "int8")
        with torch.inference_mode():
            logits.append(model(x).logits)
    assert torch.equal(*logits)
    assert torch.backends.quantized.engine == engine


@pytest.mark.skipif(digits.digit_format() is None, reason="no exact fbgemm int8 GEMM on this CPU")
def test_the_scripted_layers_compute_what_the_python_loop_does(reference):
    model, _ = precision.apply_precision(copy.deepcopy(reference), "int8")
    assert model.decoder.script_args is not None  # TorchScript runs this model's layers
    x = ids(reference, 2, 12)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0
    results = []
    for args in (model.decoder.script_args, None):
        model.decoder.script_args = args
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            first = model(x, attention_mask=mask, past_key_values=cache).logits
            step = model(x[:, -1:], attention_mask=torch.cat([mask, mask[:, -1:]], 1),
                         past_key_values=cache).logits
        results.append((first, step))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
