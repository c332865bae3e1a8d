"""Picking the next token from a step's logits, as transformers' generate() picks it."""

from __future__ import annotations

import torch

from .reply import Sampling

DEFAULT_TOP_K = 50  # transformers' default when the model's generation config sets none


def sample(logits: torch.Tensor, s: Sampling, top_k: int, prompt_ids: torch.Tensor,
           tokens: list[int], generator: torch.Generator | None = None) -> int:
    """The next token with these settings: repetition penalty (over the prompt's ids and the
    reply's `tokens` so far), presence and frequency penalties (over the reply's tokens, as
    OpenAI defines them), then greedy, or temperature, top-k, top-p and a random draw (from
    `generator` when the reply has a seed)."""
    logits = logits.float()
    if s.repetition_penalty != 1.0:
        seen = torch.cat([prompt_ids, torch.tensor(tokens, dtype=torch.long)])
        scores = logits.gather(0, seen)
        scores = torch.where(scores < 0, scores * s.repetition_penalty,
                             scores / s.repetition_penalty)
        logits = logits.scatter(0, seen, scores)
    if tokens and (s.presence_penalty or s.frequency_penalty):
        ids, counts = torch.tensor(tokens, dtype=torch.long).unique(return_counts=True)
        logits = logits.index_add(0, ids, -(s.frequency_penalty * counts.float()
                                            + s.presence_penalty))
    if s.temperature <= 0:
        return int(logits.argmax())
    logits = logits / s.temperature
    top, index = torch.topk(logits, min(top_k, logits.numel()))
    probs = torch.softmax(top, dim=0)
    # Nucleus: keep the most likely tokens until their mass reaches top_p (at least one).
    outside = (probs.cumsum(0) - probs) >= s.top_p
    outside[0] = False
    probs = probs.masked_fill(outside, 0.0)
    return int(index[torch.multinomial(probs, 1, generator=generator)])
