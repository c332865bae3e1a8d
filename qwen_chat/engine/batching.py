"""Several replies' KV caches stacked into one, so that one forward pass steps them all."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache


class Batch:
    """The caches of several replies (each member has a `.cache`), left-padded to one length
    and stacked, for one forward pass per step. Padding is masked out and each row keeps its
    own positions, so every reply gets the tokens it would get alone."""

    def __init__(self, members: list, config):
        self.members = list(members)
        lengths = [m.cache.get_seq_length() for m in members]
        width = max(lengths)
        self.pads = [width - n for n in lengths]
        self.cache = DynamicCache(config=config)
        for i, _ in enumerate(members[0].cache.layers):
            keys = [F.pad(m.cache.layers[i].keys, (0, 0, p, 0)) for m, p in zip(members, self.pads)]
            values = [F.pad(m.cache.layers[i].values, (0, 0, p, 0)) for m, p in zip(members, self.pads)]
            self.cache.update(torch.cat(keys), torch.cat(values), i)
        for m in members:
            m.cache = None  # held by the batch now, not twice
        self.mask = torch.ones(len(members), width, dtype=torch.long)
        for row, pad in enumerate(self.pads):
            self.mask[row, :pad] = 0

    def split(self, config) -> None:
        """Give every member its own cache back (padding removed)."""
        for row, (m, pad) in enumerate(zip(self.members, self.pads)):
            cache = DynamicCache(config=config)
            for i, layer in enumerate(self.cache.layers):
                cache.update(layer.keys[row:row + 1, :, pad:].clone(),
                             layer.values[row:row + 1, :, pad:].clone(), i)
            m.cache = cache
        self.cache = None
