"""Search over a big history: 10,000 conversations of one user, in Chinese and English, in a
real SQLite file made through the app's store; every kind of query the sidebar sends, timed.

    .venv/bin/python bench/search.py [--conversations 10000] [--messages 6]

Prints a markdown table (median and worst of 20 runs per query, in ms) and PASS/FAIL against
the target of 100 ms. A script, not a test: it never fails the build.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwen_chat import search  # noqa: E402
from qwen_chat.store import Store  # noqa: E402

TARGET_MS = 100.0
OWNER = "o" * 32
ZH = ("今天的天气怎么样 请帮我写一封邮件 解释一下这段代码 翻译成英文 总结这篇文章 推荐几本好书 "
      "如何学习编程 北京有哪些景点 周末做什么菜 帮我润色这段话").split()
EN = ("the weather today is sunny please write an email explain this code translate to chinese "
      "summarise the article recommend some books how to learn programming").split()


def fill(store: Store, conversations: int, messages: int, rng: random.Random) -> None:
    """The history, written in big transactions (the store's own schema, indexes, triggers)."""
    now = time.time()
    db = store.db
    with db.atomic():
        for c in range(conversations):
            cid = f"{c:032x}"
            db.execute("INSERT INTO conversations (id, owner, title, created_at, updated_at) "
                       "VALUES (?, ?, ?, ?, ?)", [cid, OWNER, " ".join(rng.sample(EN, 3)),
                                                 now - c * 600, now - c * 600])
            for m in range(messages):
                words = rng.sample(ZH, 4) + rng.sample(EN, 12)
                rng.shuffle(words)
                db.execute("INSERT INTO messages (conversation_id, role, content, created_at, "
                           "status) VALUES (?, ?, ?, ?, 'complete')",
                           [cid, "user" if m % 2 == 0 else "assistant", " ".join(words), now])
        # The needle: one conversation, the one a user looks for.
        db.execute("UPDATE messages SET content = content || ' 量子计算的原理 quantum entanglement' "
                   "WHERE id = (SELECT MAX(id) FROM messages WHERE conversation_id = ?)",
                   [f"{conversations // 2:032x}"])


def cpu_line() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(l.split(":", 1)[1].strip() for l in lines if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=6, help="per conversation")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="qwen-chat-search-"))
    store = Store(folder / "chat.db")
    started = time.perf_counter()
    fill(store, args.conversations, args.messages, random.Random(0))
    print(f"{args.conversations:,} conversations x {args.messages} messages written in "
          f"{time.perf_counter() - started:.1f} s ({(folder / 'chat.db').stat().st_size / 2**20:.0f} "
          f"MB with its index); {cpu_line()}, SQLite "
          f"{__import__('sqlite3').sqlite_version}\n")
    queries = [("2-character Chinese, rare (scan)", "量子"), ("2-character Chinese, common (scan)", "天气"),
               ("Chinese phrase, rare (index)", "量子计算"), ("English word, rare (index)", "entanglement"),
               ("English word, everywhere (index)", "weather"), ("a title word (index)", "recommend"),
               ("nothing matches (index)", "zebra crossing"), ("one letter (scan)", "q")]
    print("| query | text | hits | median ms | worst ms |\n|---|---|---|---|---|")
    worst_all = 0.0
    for label, text in queries:
        times, hits = [], []
        for _ in range(20):
            t0 = time.perf_counter()
            hits = search.search(store, OWNER, text)
            times.append((time.perf_counter() - t0) * 1000)
        worst_all = max(worst_all, max(times))
        print(f"| {label} | {text} | {len(hits)} | {statistics.median(times):.1f} | "
              f"{max(times):.1f} |")
    verdict = "PASS" if worst_all < TARGET_MS else "FAIL"
    print(f"\n{verdict}: every query under {TARGET_MS:.0f} ms (worst {worst_all:.1f} ms)")
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
