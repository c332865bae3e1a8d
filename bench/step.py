"""Where one decode step's time goes: the engine's forward pass on one token, timed, then
profiled by operator (torch.profiler). A diagnosis, not a headline (bench/app.py is that).

    .venv/bin/python bench/step.py                  # int8 (the digits kernel where it is exact)
    .venv/bin/python bench/step.py --precision fp32
    .venv/bin/python bench/step.py --parts          # the step in parts: layers, products, lm_head

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
    p.add_argument("--parts", action="store_true",
                   help="time the step's parts (digits kernel only) instead of profiling it")
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
    if args.parts:
        parts(engine, ids, args.runs)
        return

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


def parts(engine, ids, runs: int) -> None:
    """One token's forward pass, its decoder layers (the TorchScript call), their products
    alone (the same fbgemm calls back to back, inputs of the same shapes), and lm_head alone:
    medians of 30 calls each, interleaved, `runs` times (the forward pass's context grows by
    30 tokens a run). Layers minus products is what runs
    between the products (norms, digits, rotary, attention) plus what running it in between
    costs the products."""
    import torch
    from transformers import DynamicCache

    from qwen_chat.engine import decoder, scripted

    d = engine.model.decoder
    if d.script_args is None:
        print("--parts needs the digits kernel's TorchScript layers")
        return
    packed, reduce_range = d.script_args[0], d.script_args[6]
    rows = [torch.cat([torch.randint(-127, 128, (2, p[0].in_features)).float(), p[0].extremes])
            for _, qkv, o, _, gu, down in d.layers for p in (qkv, o, gu, down)]
    token = torch.tensor([[int(ids[0, -1])]])

    def median_ms(fn) -> float:
        times = []
        for _ in range(30):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000

    print("\n| run | forward pass (ms) | layers (ms) | their 96 products alone (ms) | "
          "layers minus products (ms) | lm_head alone (ms) |\n|---:|---:|---:|---:|---:|---:|")
    with torch.inference_mode():
        cache = DynamicCache(config=engine.model.config)
        engine._forward(cache, input_ids=ids, logits_to_keep=1)
        past = cache.get_seq_length()
        h = d.embed(token)
        cos, sin = d.rotary(h, torch.tensor([[past]]))
        cos, sin = cos.unsqueeze(2), scripted.signed_sin(sin.unsqueeze(2))
        buffers = [decoder.room(layer, 1, d.kv_heads, d.head_dim, past, past + 1, d.kv_dtype)
                   for layer in cache.layers[:len(d.layers)]]
        keys, values = [k for k, _ in buffers], [v for _, v in buffers]
        normed = torch.randn(1, 1, d.config.hidden_size)

        def forward():  # on a copy of the cache's state, so that the other parts see `past`
            engine._forward(grown, input_ids=token)

        grown = DynamicCache(config=engine.model.config)
        engine._forward(grown, input_ids=ids, logits_to_keep=1)

        def products():
            for x, p in zip(rows, packed):
                torch.ops.quantized.linear_dynamic(x, p, reduce_range)

        for run in range(runs):
            whole = median_ms(forward)
            layers = median_ms(lambda: decoder._scripted_layers()(
                h, cos, sin, None, keys, values, past, *d.script_args))
            alone = median_ms(products)
            head = median_ms(lambda: d.head(normed))
            print(f"| {run + 1} | {whole:.2f} | {layers:.2f} | {alone:.2f} | {layers - alone:.2f} | "
                  f"{head:.2f} |")
    print(f"\n{past} tokens of context.")


if __name__ == "__main__":
    main()
