"""The scheduler's step, driven by hand (no scheduler thread), and the thread governor."""

from __future__ import annotations

import pytest
import torch

from qwen_chat.engine.local import Engine, Sampling
from qwen_chat.engine.threads import WINDOW, ThreadGovernor

MESSAGES = [{"role": "user", "content": "你好, hello"}]
FIVE = Sampling(temperature=0, max_new_tokens=5, repetition_penalty=3.0)


@pytest.fixture()
def engine(tiny_model):
    return Engine(*tiny_model, kv_cache_mb=0, autostart=False)


def pieces(generation) -> list[str]:
    """What a reader of the stream has been handed so far (without waiting)."""
    out = []
    while not generation._pieces.empty():
        out.append(generation._pieces.get_nowait())
    return out


def test_each_step_prefills_new_replies_and_decodes_all_running_ones(engine):
    first = engine.generate(MESSAGES, FIVE)
    assert first.tokens == [] and engine._scheduler is None  # queued: nothing runs by itself
    assert engine.step() == [first]  # prefilled (token 1) and decoded (token 2)
    assert len(first.tokens) == 2
    second = engine.generate(MESSAGES, FIVE)
    assert engine.step() == [first, second]  # joins the batch: one pass for both
    assert (len(first.tokens), len(second.tokens)) == (3, 2)
    assert engine.step_sizes == {1: 1, 2: 1}
    while first.running or second.running:
        engine.step()
    assert len(first.tokens) == len(second.tokens) == 5  # cut at max_new_tokens
    assert first.tokens == second.tokens  # greedy, same prompt: batching changes nothing
    text = "".join(p for p in pieces(first) if p)
    assert text == engine.tokenizer.decode(first.tokens, skip_special_tokens=True)


def test_hand_out_samples_from_the_logits_it_is_given(engine):
    reply = engine.generate(MESSAGES, FIVE)
    engine._schedule_step(engine._admit(0))  # prefilled: it runs
    forced = torch.full((1, engine.model.config.vocab_size), -1e9)
    forced[0, 7] = 0.0
    engine._hand_out([reply], forced)
    assert reply.tokens[-1] == 7
    assert pieces(reply)[-1].endswith(engine.tokenizer.decode([7]))  # streamed at once


def test_a_reply_cancelled_between_steps_ends_at_the_next_one(engine):
    reply = engine.generate(MESSAGES, Sampling(temperature=0, max_new_tokens=1000))
    engine.step()
    reply.cancel.set()
    assert engine.step() == []
    assert not reply.running and len(reply.tokens) == 2
    assert pieces(reply)[-1] is None  # its stream has ended


class FakeMachine:
    """CPU seconds of the machine and of this process, advanced by hand."""

    def __init__(self):
        self.now = self.machine = self.own = 0.0

    def run(self, seconds: float, *, ours: float, others: float) -> None:
        self.now += seconds
        self.own += ours * seconds
        self.machine += (ours + others) * seconds


def governor(fake: FakeMachine, applied: list[int], max_threads: int = 2) -> ThreadGovernor:
    return ThreadGovernor(max_threads, set_threads=applied.append, machine=lambda: fake.machine,
                          own=lambda: fake.own, clock=lambda: fake.now)


def test_threads_drop_at_once_when_another_program_takes_a_core():
    fake, applied = FakeMachine(), []
    g = governor(fake, applied)
    assert g.before_pass() == 2 and applied == [2]  # quiet: every core
    fake.run(WINDOW, ours=2, others=0)
    assert g.before_pass() == 2
    fake.run(WINDOW, ours=1.33, others=0.67)  # a busy program shares the cores with us
    assert g.before_pass() == 1 and applied == [2, 1]
    fake.run(WINDOW, ours=1, others=1)  # it keeps its core
    assert g.before_pass() == 1 and applied == [2, 1]


def test_threads_come_back_only_after_two_quiet_windows():
    fake, applied = FakeMachine(), []
    g = governor(fake, applied)
    g.before_pass()
    fake.run(WINDOW, ours=1, others=1)
    assert g.before_pass() == 1
    fake.run(WINDOW, ours=1, others=0)  # one quiet window: a pause, maybe
    assert g.before_pass() == 1
    fake.run(WINDOW, ours=1, others=0.1)
    assert g.before_pass() == 2 and applied == [2, 1, 2] and g.changes == 2


def test_idle_sampling_measures_the_load_before_the_next_reply():
    fake, applied = FakeMachine(), []
    g = governor(fake, applied)
    g.before_pass()
    for _ in range(40):  # ten seconds idle, a busy program running meanwhile
        fake.run(WINDOW, ours=0, others=1)
        g.sample()
    assert g.before_pass() == 1  # the first pass after the pause already uses one thread


def test_fixed_threads_never_change():
    fake, applied = FakeMachine(), []
    g = ThreadGovernor(2, adaptive=False, set_threads=applied.append, machine=lambda: fake.machine,
                       own=lambda: fake.own, clock=lambda: fake.now)
    g.before_pass()
    fake.run(WINDOW, ours=1, others=1)
    assert g.before_pass() == 2 and applied == [2] and g.idle_wait is None
