"""Picking the next token from a step's logits, as transformers' generate() picks it."""

from __future__ import annotations

import torch

from .reply import Sampling

DEFAULT_TOP_K = 50  # transformers' default when the model's generation config sets none
BLOCK = 64  # logits per block in top_k


def top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(logits, k) of a 1-D tensor, 4-5x faster over a large vocabulary (151,936:
    60 vs 300 us): the k largest values lie in the k blocks with the largest maxima (a block
    holding one of them has a maximum at least the k-th largest value, and each such block
    holds one of them), so only those k blocks are searched."""
    n = logits.numel()
    if n < 4 * k * BLOCK or n % BLOCK:
        return torch.topk(logits, min(k, n))
    blocks = logits.view(-1, BLOCK)
    _, chosen = torch.topk(blocks.amax(1), k)
    values, where = torch.topk(blocks[chosen].view(-1), k)
    return values, chosen[where // BLOCK] * BLOCK + where % BLOCK


def sample(logits: torch.Tensor, s: Sampling, k: int, prompt_ids: torch.Tensor,
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
    top, index = top_k(logits, k)  # the same tokens as after dividing by the temperature
    probs = torch.softmax(top / s.temperature, dim=0)
    # Nucleus: keep the most likely tokens until their mass reaches top_p (at least one).
    outside = (probs.cumsum(0) - probs) >= s.top_p
    outside[0] = False
    probs = probs.masked_fill(outside, 0.0)
    return int(index[torch.multinomial(probs, 1, generator=generator)])
