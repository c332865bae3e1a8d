"""The next-token rule (engine/sampling.py) on hand-made logits."""

from __future__ import annotations

import torch

from qwen_chat.engine.reply import Sampling
from qwen_chat.engine.sampling import sample

NO_PROMPT = torch.tensor([], dtype=torch.long)


def test_presence_and_frequency_penalties_lower_what_the_reply_already_said():
    logits = torch.tensor([5.0, 4.0, 3.0, 0.0])
    greedy = Sampling(temperature=0)
    assert sample(logits, greedy, 50, NO_PROMPT, [0, 0]) == 0
    # frequency: 2 x 1.5 = 3 off token 0 (5 -> 2): token 1 (4) wins.
    assert sample(logits, Sampling(temperature=0, frequency_penalty=1.5), 50, NO_PROMPT, [0, 0]) == 1
    # presence: once, whatever the count: 5 - 1.5 = 3.5 < 4.
    assert sample(logits, Sampling(temperature=0, presence_penalty=1.5), 50, NO_PROMPT, [0, 0, 0]) == 1
    # a negative penalty favours what was said.
    assert sample(logits, Sampling(temperature=0, presence_penalty=-2.5), 50, NO_PROMPT, [2]) == 2
    # nothing said yet: no penalty.
    assert sample(logits, Sampling(temperature=0, frequency_penalty=2), 50, NO_PROMPT, []) == 0


def test_a_seeded_draw_repeats_and_others_vary():
    logits = torch.zeros(1000)
    s = Sampling(temperature=1.0, top_p=1.0)
    draws = lambda seed: [sample(logits, s, 1000, NO_PROMPT, [], g)  # noqa: E731
                          for g in [torch.Generator().manual_seed(seed)] for _ in range(20)]
    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
