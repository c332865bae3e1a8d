"""The streaming engine on a tiny random Qwen2 model with the tests' own ChatML tokenizer."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import Qwen2ForCausalLM

from qwen_chat.engine.local import Engine, Sampling, flatten_content
from qwen_chat.errors import GenerationError

# repetition_penalty keeps the random tiny model from repeating one token: a varied text,
# multi-byte characters included, makes the stream-vs-reference comparison meaningful.
GREEDY = Sampling(temperature=0, max_new_tokens=40, repetition_penalty=3.0)
# Greedy on the random tiny model settles into repeating one token and never ends a turn.
ENDLESS = Sampling(temperature=0, max_new_tokens=100_000, repetition_penalty=1.0)
MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "你好, "},
                                         {"type": "text", "text": "hello 👋"}]}]


@pytest.fixture(scope="module")
def engine(tiny_model):
    model, tokenizer = tiny_model
    return Engine(model, tokenizer)


def test_gradio_content_blocks_are_flattened_to_text():
    assert flatten_content([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "ab"
    assert flatten_content("plain") == "plain"
    assert flatten_content(None) == ""


def test_prompt_uses_the_chat_template(engine):
    ids = engine.prompt_ids(MESSAGES)
    text = engine.tokenizer.decode(ids[0])
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n你好, hello 👋"
                    "<|im_end|>\n<|im_start|>assistant\n")


def test_a_request_counted_then_generated_is_templated_once(engine, monkeypatch):
    from qwen_chat.engine import prompt

    calls = []
    real = prompt.prompt_ids
    monkeypatch.setattr(prompt, "prompt_ids", lambda *a: calls.append(1) or real(*a))
    messages = [*MESSAGES, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "again?"}]
    n = engine.count_tokens(messages)
    ids = engine.prompt_ids(messages)
    assert calls == [1] and ids.shape == (1, n)
    assert engine.prompt_ids([*messages[:-1], {"role": "user", "content": "other"}]).shape[1] != 0
    assert calls == [1, 1]  # another history is templated on its own


def hf_generate(engine, ids, sampling: Sampling) -> torch.Tensor:
    """transformers' own generate(), greedy: the reference the engine's decode loop must match."""
    with torch.inference_mode():
        return engine.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
            max_new_tokens=sampling.max_new_tokens, repetition_penalty=sampling.repetition_penalty,
            eos_token_id=engine.eos_token_ids, pad_token_id=engine.eos_token_ids[0],
            temperature=None, top_p=None, top_k=None)


def test_streaming_yields_the_same_text_as_transformers_greedy_generate(engine):
    generation = engine.generate(MESSAGES, GREEDY)
    pieces = [p for p in generation if p]
    ids = engine.prompt_ids(MESSAGES)
    reference = hf_generate(engine, ids, GREEDY)
    expected = engine.tokenizer.decode(reference[0, ids.shape[1]:], skip_special_tokens=True)
    assert len(pieces) > 1
    assert "".join(pieces) == expected
    assert generation.stats.prompt_tokens == ids.shape[1]
    assert generation.stats.new_tokens == reference.shape[1] - ids.shape[1]
    assert generation.stats.ttft > 0 and generation.stats.tokens_per_s > 0


def test_close_ends_the_generate_thread_quickly(engine):
    generation = engine.generate(MESSAGES, ENDLESS)
    for piece in generation:
        if piece:
            break
    started = time.perf_counter()
    generation.close()
    assert not generation.running
    assert time.perf_counter() - started < 2.0
    assert 0 < generation.stats.new_tokens < 10_000
    assert not engine.lock.locked()  # the next reply can start


def first_text(generation) -> str:
    return next(p for p in generation if p)


def test_closing_one_generation_leaves_another_running(engine):
    first, second = engine.generate(MESSAGES, ENDLESS), engine.generate(MESSAGES, ENDLESS)
    assert first_text(first) and first_text(second)  # generated together
    second.close()
    assert not second.running
    tokens_before = first.stats.new_tokens
    time.sleep(0.3)
    assert first.running and first.stats.new_tokens > tokens_before
    first.close()
    assert not first.running


def test_beyond_max_batch_a_reply_waits_its_turn_and_can_be_stopped_while_waiting(tiny_model):
    engine = Engine(*tiny_model, max_batch=2)
    first, second = engine.generate(MESSAGES, ENDLESS), engine.generate(MESSAGES, ENDLESS)
    assert first_text(first) and first_text(second)
    third, fourth = engine.generate(MESSAGES, ENDLESS), engine.generate(MESSAGES, ENDLESS)
    time.sleep(0.5)
    assert third.stats.new_tokens == 0 and fourth.stats.new_tokens == 0  # waiting
    assert next(iter(third)) == ""  # a heartbeat while waiting
    third.close()  # stopped while waiting: ends at once, never generated
    assert not third.running and third.stats.new_tokens == 0
    first.close()  # makes room: the next in line (fourth) starts
    assert first_text(fourth)
    for g in (second, fourth):
        g.close()
    assert not engine.lock.locked()


CONVERSATIONS = [
    [{"role": "user", "content": "short"}],
    [{"role": "system", "content": "You answer in long, careful paragraphs."},
     {"role": "user", "content": "A much longer question, 关于长上下文的问题, with more tokens in it."}],
    [{"role": "user", "content": "第三个对话 🙂"}],
]


def test_replies_generated_together_are_the_ones_each_gets_alone(tiny_model):
    """Batched decode (left-padded caches of different lengths, replies joining and leaving
    mid-way) yields exactly the tokens each reply gets on its own."""
    # Driven step by step (no scheduler thread), so that the third reply joins while the
    # other two run on any machine, however loaded.
    engine = Engine(*tiny_model, max_batch=4, kv_cache_mb=0, autostart=False)
    lengths = [7, 25, 40]
    alone = [engine.tokenizer.decode(
        hf_generate(engine, engine.prompt_ids(m), Sampling(0, 1.0, n, 3.0))[
            0, engine.prompt_ids(m).shape[1]:], skip_special_tokens=True)
        for m, n in zip(CONVERSATIONS, lengths)]
    first = engine.generate(CONVERSATIONS[0], Sampling(0, 1.0, lengths[0], 3.0))
    second = engine.generate(CONVERSATIONS[1], Sampling(0, 1.0, lengths[1], 3.0))
    engine.step()
    engine.step()
    third = engine.generate(CONVERSATIONS[2], Sampling(0, 1.0, lengths[2], 3.0))  # joins late
    while first.running or second.running or third.running:
        engine.step()
    together = ["".join(first), "".join(second), "".join(third)]
    assert together == alone
    assert engine.step_sizes[3] > 0 and engine.step_sizes[2] > 0  # really decoded together


class _Exploding(Qwen2ForCausalLM):
    """A real tiny model whose third forward pass fails, as a broken kernel or OOM would."""
    def forward(self, *args, **kwargs):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            raise RuntimeError("kernel exploded")
        return super().forward(*args, **kwargs)


def test_an_exception_inside_generate_reaches_the_caller(tiny_dir, tiny_model):
    model = _Exploding.from_pretrained(tiny_dir, dtype=torch.float32)
    engine = Engine(model, tiny_model[1])
    generation = engine.generate(MESSAGES, GREEDY)
    started = time.perf_counter()
    with pytest.raises(GenerationError, match="RuntimeError: kernel exploded"):
        for _ in generation:
            pass
    assert time.perf_counter() - started < 10
    assert not generation.running


def test_eos_ids_include_the_chatml_end_of_turn(engine):
    assert engine.tokenizer.convert_tokens_to_ids("<|im_end|>") in engine.eos_token_ids
