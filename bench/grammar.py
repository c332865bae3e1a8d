"""What constrained decoding costs per token, as a client of /v1 sees it.

Starts `app.py` (defaults, the Qwen2.5-0.5B shape with random weights and the real Qwen
tokenizer) and streams, through the official openai client, the same request three ways:
plain text, `response_format` json_schema, and `tool_choice: "required"`; interleaved, 64 new
tokens each (random weights fill the JSON's strings, so every reply runs its 64 tokens). Also
times the grammar alone in this process: the mask for one token (llguidance) and applying it
to 151,936 logits, over a JSON reply of the same schema.

    .venv/bin/python bench/grammar.py [--rounds 4] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench as engine_bench  # noqa: E402 - puts the repository on sys.path
import peer  # noqa: E402
from running import RunningApp, config_text  # noqa: E402

SCHEMA = {"type": "object", "properties": {"title": {"type": "string"},
                                           "items": {"type": "array", "items": {"type": "string"}}},
          "required": ["title", "items"], "additionalProperties": False}
TOOL = {"type": "function", "function": {"name": "search", "description": "Search the notes.",
                                         "parameters": {"type": "object", "properties": {
                                             "query": {"type": "string"}}, "required": ["query"]}}}
QUESTION = "List three places to visit in Hangzhou, 请用中文。"


def mask_cost(tokenizer_dir: Path, vocab: int = 151936) -> dict:
    """Microseconds per token for the grammar alone: mask, apply, advance."""
    import torch
    from transformers import AutoTokenizer

    from qwen_chat.engine.grammar import Grammars
    from qwen_chat.engine.reply import json_spec

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    started = time.perf_counter()
    grammars = Grammars(tok, vocab)
    constraint = grammars.constraint(json_spec(SCHEMA))
    setup = time.perf_counter() - started
    text = json.dumps({"title": "杭州", "items": ["西湖 West Lake", "灵隐寺", "Hefang Street"]},
                      ensure_ascii=False)
    times = []
    for token in tok(text, add_special_tokens=False)["input_ids"]:
        logits = torch.zeros(vocab)
        t = time.perf_counter()
        constraint.mask(logits)
        constraint.advance(token)
        times.append(time.perf_counter() - t)
    return {"first_setup_s": round(setup, 2), "tokens": len(times),
            "median_us": round(statistics.median(times) * 1e6), "max_us": round(max(times) * 1e6)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--model", type=Path, default=HERE.parent / ".cache/bench/qwen2.5-0.5b-random-bf16")
    p.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared" / "models" / "qwen2.5-0.5b-instruct")
    args = p.parse_args()
    engine_bench.materialize(args.shared.resolve(), args.model.resolve())
    print("grammar alone:", mask_cost(args.model), flush=True)

    import httpx
    from openai import OpenAI

    port = peer._free_port()
    config = config_text(args.model.resolve(), port=port, max_new_tokens=args.new_tokens)
    cases = {"plain": {}, "json_schema": {"response_format": {"type": "json_schema", "json_schema": {
        "name": "places", "schema": SCHEMA, "strict": True}}},
        "tool required": {"tools": [TOOL], "tool_choice": "required"}}
    figures: dict[str, list[tuple]] = {name: [] for name in cases}
    with RunningApp(config, port=port, cache_dir=args.model.parent / "app-cache-http",
                    log_path=args.model.parent / "grammar-server.log") as app:
        client = OpenAI(base_url=f"{app.url}v1", api_key="none",
                        http_client=httpx.Client(trust_env=False, timeout=900))
        model = client.models.list().data[0].id
        print(f"app ready ({app.kernel})", flush=True)
        for round_ in range(args.rounds + 1):  # round 0 warms (the grammar's tokenizer, caches)
            for name, extra in cases.items():
                first = last = None
                tokens, sent = 0, time.perf_counter()
                for chunk in client.chat.completions.create(
                        model=model, stream=True, max_tokens=args.new_tokens, temperature=0.7,
                        stream_options={"include_usage": True},
                        messages=[{"role": "user", "content": QUESTION}], **extra):
                    if chunk.usage:
                        tokens = chunk.usage.completion_tokens
                    if chunk.choices and (chunk.choices[0].delta.content or chunk.choices[0].delta.tool_calls):
                        now = time.perf_counter()
                        first = first or now
                        last = now
                if round_ and last:
                    rate = (tokens - 1) / (last - first) if last > first and tokens > 1 else None
                    figures[name].append((rate, last - sent, tokens))
                    print(f"round {round_} {name}: {rate and round(rate, 1)} tok/s, "
                          f"{last - sent:.2f} s for {tokens} tokens", flush=True)
    print("\n| request | tok/s while streaming (median) | whole request, s (median) | tokens |\n|---|---:|---:|---:|")
    for name, values in figures.items():
        rates = [r for r, _, _ in values if r]
        rate = f"{statistics.median(rates):.1f}" if rates else "- (the call comes whole at its end)"
        print(f"| {name} | {rate} | {statistics.median(w for _, w, _ in values):.2f} | "
              f"{statistics.median(n for _, _, n in values):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
