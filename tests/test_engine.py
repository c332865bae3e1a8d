"""The streaming engine on a tiny random Qwen2 model with the tests' own ChatML tokenizer."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import Qwen2ForCausalLM

from qwen_chat.engine import Engine, Sampling, flatten_content
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


def test_streaming_yields_the_same_text_as_plain_greedy_generation(engine):
    generation = engine.generate(MESSAGES, GREEDY)
    pieces = [p for p in generation if p]
    ids = engine.prompt_ids(MESSAGES)
    with torch.inference_mode():
        reference = engine.model.generate(**engine.generate_kwargs(ids, GREEDY))
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


def test_closing_one_generation_leaves_another_running(engine):
    first = engine.generate(MESSAGES, ENDLESS)
    first_pieces = iter(first)
    assert next(p for p in first_pieces if p)
    second = engine.generate(MESSAGES, ENDLESS)  # waits for the engine: only heartbeats
    assert next(iter(second)) == ""
    second.close()
    assert not second.running
    tokens_before = first.stats.new_tokens
    time.sleep(0.3)
    assert first.running and first.stats.new_tokens > tokens_before
    first.close()
    assert not first.running


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
