"""Where one decode step's time goes: the engine's forward pass on one token, timed, then
profiled by operator (torch.profiler). A diagnosis, not a headline (bench/app.py is that).

    .venv/bin/python bench/step.py                  # int8 (the digits kernel where it is exact)
    .venv/bin/python bench/step.py --precision fp32

The model is the Qwen2.5-0.5B shape with random weights (bench.py makes it once). The model is
loaded in a thread that ends, as app.py does, so that only one OpenMP pool lives (see
engine/scheduler.py: a second one makes every step about a third slower).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", default="int8")
    p.add_argument("--cache", type=Path, default=REPO / ".cache/bench/qwen2.5-0.5b-random-bf16")
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared/models/qwen2.5-0.5b-instruct")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--runs", type=int, default=6)
    args = p.parse_args()

    import torch
    from transformers import DynamicCache

    from bench.bench import materialize
    from qwen_chat.engine import sources
    from qwen_chat.engine.local import Engine

    materialize(args.shared, args.cache)
    loaded = {}
    loader = threading.Thread(target=lambda: loaded.update(zip(
        ("model", "tok"), sources.load(str(args.cache), cache_dir=REPO / ".cache/bench/app-cache",
                                       precision=args.precision))))
    loader.start()
    loader.join()
    engine = Engine(loaded["model"], loaded["tok"])
    ids = engine.prompt_ids([{"role": "user", "content": "hello there " * 40}])
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
    print(f"CPU: {cpu}; torch {torch.__version__}; {torch.get_num_threads()} threads; "
          f"precision: {engine.precision}")

    def step_times() -> list[float]:
        times = []
        with torch.inference_mode():
            for _ in range(args.runs):
                cache = DynamicCache(config=engine.model.config)
                out = engine._forward(cache, input_ids=ids, logits_to_keep=1)
                token = torch.tensor([[int(out.logits[0, -1].argmax())]])
                for _ in range(5):
                    engine._forward(cache, input_ids=token)
                started = time.perf_counter()
                for _ in range(args.steps):
                    engine._forward(cache, input_ids=token)
                times.append((time.perf_counter() - started) / args.steps * 1000)
        return times

    times = step_times()
    print(f"forward pass, one token: {' '.join(f'{t:.2f}' for t in times)} ms; "
          f"median {statistics.median(times):.2f} ms")

    from torch.profiler import ProfilerActivity, profile

    steps = 20
    with torch.inference_mode():
        cache = DynamicCache(config=engine.model.config)
        out = engine._forward(cache, input_ids=ids, logits_to_keep=1)
        token = torch.tensor([[int(out.logits[0, -1].argmax())]])
        with profile(activities=[ProfilerActivity.CPU]) as prof:  # the decode steps only
            for _ in range(steps):
                engine._forward(cache, input_ids=token)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    print("\n| operator | calls a step | ms a step (self, profiled) | share |\n|---|---:|---:|---:|")
    for e in events[:15]:
        print(f"| {e.key} | {e.count / steps:.0f} | {e.self_cpu_time_total / steps / 1000:.2f} | "
              f"{e.self_cpu_time_total / total:.0%} |")


if __name__ == "__main__":
    main()
