"""Does decoding several conversations together (one batch) beat answering them one by one?

    .venv/bin/python bench/batch.py [--batch 4] [--new-tokens 32]

Loads the Qwen2.5-0.5B shape (random weights, the folder bench.py materializes) through the
app's loader with its default precision, then sends `--batch` different prompts at once to the
app's engine twice, in one process and one run: with `max_batch: 1` (one reply after another)
and with `max_batch` = `--batch` (decoded together). Prints total generated tokens per second
for both, and each reply's own speed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from bench.bench import MESSAGES, SYSTEM, materialize  # noqa: E402
from qwen_chat.config import physical_cores  # noqa: E402
from qwen_chat.engine.local import Engine, Sampling  # noqa: E402
from qwen_chat.engine.sources import load  # noqa: E402


def run(engine: Engine, prompts: list[list[dict]], sampling: Sampling) -> tuple[float, float, int]:
    """Send every prompt at once; return (seconds until all ended, mean per-reply tok/s, tokens)."""
    started = time.perf_counter()
    replies = [engine.generate(p, sampling) for p in prompts]
    for reply in replies:
        for _ in reply:
            pass
    elapsed = time.perf_counter() - started
    speeds = [r.stats.tokens_per_s or 0.0 for r in replies]
    return elapsed, sum(speeds) / len(speeds), sum(r.stats.new_tokens for r in replies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--cache", type=Path, default=REPO / ".cache/bench/qwen2.5-0.5b-random-bf16")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared/models/qwen2.5-0.5b-instruct")
    args = parser.parse_args()
    torch.set_num_threads(physical_cores())
    materialize(args.shared, args.cache)
    model, tok = load(str(args.cache), cache_dir=args.cache.parent / "app-cache", precision="auto")
    prompts = [[SYSTEM, {"role": "user", "content": m}] for m in MESSAGES[:args.batch]]
    # Greedy with a repetition penalty: random weights then never end a reply early.
    sampling = Sampling(temperature=0, max_new_tokens=args.new_tokens, repetition_penalty=1.05)
    one = Engine(model, tok, kv_cache_mb=0, max_batch=1)
    together = Engine(model, tok, kv_cache_mb=0, max_batch=args.batch)
    run(one, prompts[:1], Sampling(temperature=0, max_new_tokens=2))  # warm-up
    t_one, each_one, n_one = run(one, prompts, sampling)
    t_all, each_all, n_all = run(together, prompts, sampling)
    print(f"precision {model.precision}, {args.batch} conversations sent at once, "
          f"{args.new_tokens} new tokens each")
    print(f"max_batch 1 (one after another): {n_one / t_one:5.1f} tokens/s in all, "
          f"{each_one:4.1f} tokens/s per reply ({t_one:.1f} s)")
    print(f"max_batch {args.batch} (decoded together):  {n_all / t_all:5.1f} tokens/s in all, "
          f"{each_all:4.1f} tokens/s per reply ({t_all:.1f} s)")
    print(f"total throughput, together / one after another: {(n_all / t_all) / (n_one / t_one):.2f}x")


if __name__ == "__main__":
    main()
