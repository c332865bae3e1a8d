"""What an attached short document costs the first token, through the chat service the page calls.

The Qwen2.5-0.5B shape with random weights (bench.py's), the app's own loading path and engine,
a ChatService over a temporary SQLite file. Each round, in a new conversation:

* plain: a question typed (the page hands each keystroke's draft to the service, which has the
  engine prefill it), then sent;
* attached: a ~1,000-token note attached, then the same question typed, then sent (the page
  prefills the note with the first draft, as soon as it is attached);
* attached, sent at once: the note and the question sent with no draft (a script, a paste).

Time to first token is measured from Send. Interleaved rounds, medians.

    .venv/bin/python bench/documents.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench as engine_bench  # noqa: E402 - puts the repository on sys.path

QUESTION = "Which three places does the note recommend, and how long does each take?"
NOTE = ("杭州旅行笔记 Hangzhou travel note. " + " ".join(
    f"Day {i}: West Lake walk, Lingyin Temple, Hefang Street; 西湖散步，灵隐寺，河坊街。"
    for i in range(1, 40)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--model", type=Path, default=HERE.parent / ".cache/bench/qwen2.5-0.5b-random-bf16")
    p.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared/models/qwen2.5-0.5b-instruct")
    args = p.parse_args()
    from qwen_chat.engine import memory

    memory.one_heap()
    engine_bench.in_thread(engine_bench.materialize, args.shared.resolve(), args.model.resolve())
    from qwen_chat.chat import ChatService
    from qwen_chat.config import ConfigWatcher, load_config
    from qwen_chat.store import Store

    folder = Path(tempfile.mkdtemp(prefix="qwen-chat-bench-docs-"))
    config_path = folder / "config.yaml"
    config_path.write_text(f"model: {args.model.resolve()}\nmax_new_tokens: 8\ntemperature: 0\n",
                           encoding="utf-8")
    config = load_config(config_path)
    import importlib.util

    spec = importlib.util.spec_from_file_location("qwen_chat_app", HERE.parent / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    from qwen_chat.engine.startup import LoadProgress

    engine = engine_bench.in_thread(app.build_engine, config, args.model.parent / "app-cache-http",
                                    LoadProgress())
    store = Store(folder / "chat.db")
    service = ChatService(store, engine, ConfigWatcher(config_path, config))
    service.warm()
    time.sleep(2)
    note = folder / "hangzhou-note.txt"
    note.write_text(NOTE, encoding="utf-8")
    read = service.read_file(str(note))
    print(f"note: {read.tokens} tokens ({'short' if read.short else 'long'}); engine {engine.precision}", flush=True)

    def ask(files, typed: bool, session: str) -> float:
        if typed:
            for end in range(8, len(QUESTION), 8):  # a person types ~8 characters a second
                service.draft("o" * 32, None, QUESTION[:end], session=session, files=files).wait(60)
        final = list(service.send("o" * 32, None, QUESTION, session=session, files=files))[-1]
        return final.stats.ttft, final.stats.prompt_tokens, final.stats.cached_tokens

    results: dict[str, list] = {"plain, typed": [], "short file attached, typed": [],
                                "short file attached, sent at once": []}
    for r in range(args.rounds + 1):
        for name, files, typed in (("plain, typed", None, True),
                                   ("short file attached, typed", [str(note)], True),
                                   ("short file attached, sent at once", [str(note)], False)):
            ttft, prompt, cached = ask(files, typed, f"s{r}-{name}")
            if r:  # round 0 warms
                results[name].append((ttft, prompt, cached))
                print(f"round {r} {name}: first token {ttft:.3f} s (prompt {prompt}, cached {cached})", flush=True)
    print("\n| message | first token, s (median) | prompt tokens | read at Send |\n|---|---:|---:|---:|")
    for name, rows in results.items():
        print(f"| {name} | {statistics.median(t for t, _, _ in rows):.3f} | {rows[0][1]} | "
              f"{rows[0][1] - rows[0][2]} |")
    engine.stop_all()
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
