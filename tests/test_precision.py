"""qwen_chat.precision: int8 stays close to fp32, keeps generate + DynamicCache working, caches."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from qwen_chat import precision
from qwen_chat.precision import PRECISIONS, Int8Embedding, Int8Linear, apply_precision, load_or_quantize


@pytest.fixture(scope="module")
def tiny_fp32(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


@pytest.fixture()
def tiny(tiny_fp32):
    return copy.deepcopy(tiny_fp32)


def ids_for(model, n: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (1, n), generator=g)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits.float()


def test_quantize_rows_round_trip():
    w = torch.randn(16, 32)
    w[3] = 0  # an all-zero row must not divide by zero
    q, s = precision.quantize_rows(w)
    assert q.dtype == torch.int8 and s.shape == (16,)
    assert torch.allclose(q.float() * s[:, None], w, atol=float(s.max()) / 2 + 1e-6)
    assert (q[3] == 0).all()


@pytest.mark.parametrize("rows", [1, 3, precision.PREFILL_ROWS + 5])  # decode and prefill paths
def test_int8_linear_matches_float(rows):
    lin = torch.nn.Linear(64, 40)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(2, rows, 64)
    with torch.inference_mode():
        ref, out = lin(x), q(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out - ref).norm() / ref.norm() < 0.02


def test_int8_logits_close_to_fp32(tiny, tiny_fp32):
    ids = ids_for(tiny, 40)  # > PREFILL_ROWS: exercises the prefill path too
    ref = logits(tiny_fp32, ids)
    model, used = apply_precision(tiny, "int8")
    assert used == "int8" and model is tiny
    assert any(isinstance(m, Int8Linear) for m in model.modules())
    assert isinstance(model.get_input_embeddings(), Int8Embedding)
    assert isinstance(model.get_output_embeddings(), Int8Linear)
    out = logits(model, ids)
    assert (out - ref).norm() / ref.norm() < 0.05
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9
    for name in ("decode", "prefill"):  # single-token steps agree with the full forward
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            model(ids[:, :-1], past_key_values=cache)
            step = model(ids[:, -1:], past_key_values=cache).logits.float()
        assert torch.allclose(step[0, -1], out[0, -1], atol=0.05, rtol=0.05), name


def test_auto_picks_int8_on_cpu(tiny):
    _, used = apply_precision(tiny, "auto")
    assert used == precision.AUTO_CPU == "int8"


def test_generate_reuses_and_crops_dynamic_cache(tiny):
    model, _ = apply_precision(tiny, "int8")
    ids = ids_for(model, 10)
    kwargs = dict(do_sample=False, max_new_tokens=6, min_new_tokens=6, return_dict_in_generate=True)
    with torch.inference_mode():
        fresh = model.generate(ids, **kwargs).sequences
        cache = DynamicCache(config=model.config)
        first = model.generate(ids, past_key_values=cache, **kwargs)
        assert torch.equal(first.sequences, fresh)
        # Next "turn": keep the first 8 tokens of the cache (like kvcache.take) and extend.
        follow = torch.cat([first.sequences, ids_for(model, 4, seed=1)], 1)
        cache = first.past_key_values
        cache.crop(8 - cache.get_seq_length())  # transformers 5: negative count to drop
        assert cache.get_seq_length() == 8
        reused = model.generate(follow, past_key_values=cache, **kwargs).sequences
        again = model.generate(follow, **kwargs).sequences
    assert reused.shape == again.shape == (1, follow.shape[1] + 6)
    assert torch.equal(reused[:, :follow.shape[1]], follow)


def test_fp32_leaves_model_unchanged(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    modules = [type(m) for m in tiny.modules()]
    model, used = apply_precision(tiny, "fp32")
    assert used == "fp32" and model is tiny
    assert [type(m) for m in model.modules()] == modules
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_bf16_casts(tiny):
    model, used = apply_precision(tiny, "bf16")
    assert used == "bf16" and all(p.dtype == torch.bfloat16 for p in model.parameters())


@pytest.mark.parametrize("bad", ["int4", "INT8", "", "fp16"])
def test_unknown_precision_raises(tiny, bad):
    with pytest.raises(ValueError, match="precision"):
        apply_precision(tiny, bad)
    with pytest.raises(ValueError):
        load_or_quantize(tiny, bad, cache_file=None)


def test_precisions_tuple():
    assert PRECISIONS == ("auto", "fp32", "bf16", "int8")


def test_int8_twice_is_a_no_op_but_back_to_fp32_raises(tiny):
    apply_precision(tiny, "int8")
    assert apply_precision(tiny, "int8")[1] == "int8"
    with pytest.raises(ValueError):
        apply_precision(tiny, "fp32")


def test_disk_cache_round_trip(tiny_fp32, tmp_path, monkeypatch):
    cache_file = tmp_path / "sub" / "int8.pt"
    ids = ids_for(tiny_fp32, 40)
    built, used = load_or_quantize(copy.deepcopy(tiny_fp32), "auto", cache_file)
    assert used == "int8" and cache_file.is_file()
    expected = logits(built, ids)

    calls = []
    monkeypatch.setattr(precision, "quantize_rows", lambda w: calls.append(1) or (_ for _ in ()).throw(
        AssertionError("a matching cache must not quantize again")))
    loaded, used = load_or_quantize(copy.deepcopy(tiny_fp32), "int8", cache_file)
    assert used == "int8" and not calls
    assert torch.equal(logits(loaded, ids), expected)
    monkeypatch.undo()

    # A different model (other weights, same config) must not reuse the cache: it is rebuilt.
    other = copy.deepcopy(tiny_fp32)
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.mul_(2)
    other_key = precision.cache_key(other, "int8")
    rebuilt, _ = load_or_quantize(other, "int8", cache_file)
    assert not torch.equal(logits(rebuilt, ids), expected)
    assert torch.load(cache_file, weights_only=True)["key"] == other_key


def test_corrupt_cache_is_rebuilt(tiny_fp32, tmp_path):
    cache_file = tmp_path / "int8.pt"
    cache_file.write_bytes(b"not a torch file")
    model, used = load_or_quantize(copy.deepcopy(tiny_fp32), "int8", cache_file)
    assert used == "int8" and torch.load(cache_file, weights_only=True)["key"]


@pytest.mark.slow
def test_smollm_int8_agrees_with_fp32(smollm):
    model, tok = smollm
    quant, _ = apply_precision(copy.deepcopy(model), "int8")
    prompts = ["What is the capital of France?", "Write a haiku about the sea.",
               "How do I sort a list in Python?", "Why is the sky blue?", "What is 12 times 7?",
               "你好，请介绍一下你自己。", "中国的首都是哪里？", "写一首关于春天的短诗。",
               "Give me two tips for better sleep.", "Translate 'thank you' into French."]
    agree = total = 0
    with torch.inference_mode():
        for p in prompts:
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True)
            ids = tok(text, return_tensors="pt").input_ids
            seq = model.generate(ids, max_new_tokens=16, do_sample=False)
            start = ids.shape[1] - 1
            ref = model(seq).logits[0, start:-1].argmax(-1)
            got = quant(seq).logits[0, start:-1].argmax(-1)
            agree += (ref == got).sum().item()
            total += ref.numel()
    assert agree / total >= 0.95, f"top-1 agreement {agree / total:.3f}"
