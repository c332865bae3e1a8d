"""Does decoding several conversations together (one batch) beat answering them one by one?

    .venv/bin/python bench/batch.py [--batch 4] [--new-tokens 32]

Loads the Qwen2.5-0.5B shape (random weights, the folder bench.py materializes) through the
app's loader with its default precision, then generates `--new-tokens` greedy tokens for
`--batch` different prompts: one after another, then as one left-padded batch. Prints total
generated tokens per second for both, in one process and one run.
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
from qwen_chat.loader import load  # noqa: E402


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
    tok.padding_side = "left"
    texts = [tok.apply_chat_template([SYSTEM, {"role": "user", "content": m}], tokenize=False,
                                     add_generation_prompt=True) for m in MESSAGES[:args.batch]]
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
              pad_token_id=tok.pad_token_id or 0)
    with torch.inference_mode():
        model.generate(**tok(texts[:1], return_tensors="pt"), **{**kw, "max_new_tokens": 2,
                                                                 "min_new_tokens": 2})  # warm-up
        started = time.perf_counter()
        for text in texts:
            model.generate(**tok([text], return_tensors="pt"), **kw)
        one_by_one = time.perf_counter() - started
        started = time.perf_counter()
        model.generate(**tok(texts, return_tensors="pt", padding=True), **kw)
        batched = time.perf_counter() - started
    total = args.batch * args.new_tokens
    print(f"precision {model.precision}, {args.batch} conversations x {args.new_tokens} tokens")
    print(f"one after another: {total / one_by_one:.1f} tokens/s ({one_by_one:.1f} s)")
    print(f"one batch:         {total / batched:.1f} tokens/s ({batched:.1f} s)")
    print(f"batch / sequential throughput: {one_by_one / batched:.2f}x")


if __name__ == "__main__":
    main()
