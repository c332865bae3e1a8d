"""Soak: many messages over 8 concurrent conversations with the real small model (SmolLM2).

Zero errors, every message and reply stored, and the server's resident memory reported per 100
messages; it must stay bounded (no leak from finished or cancelled generations). CI runs a short
version; the full run (200 messages) is:

    SOAK_MESSAGES=200 .venv/bin/python -m pytest tests/test_soak.py -s
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gradio_client import Client

from tests.server import app_servers  # noqa: F401 - a fixture

MESSAGES = int(os.environ.get("SOAK_MESSAGES", "48"))
CONVERSATIONS = 8
QUESTIONS = ["What is the capital of France?", "Name a color.", "你好！", "What is 2 + 3?",
             "Say hello in Spanish.", "What do bees make?", "一年有几个月？", "Name a fruit."]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_soak_many_messages_over_eight_conversations(app_servers, gguf_path):
    # Conversations are capped at max_input_tokens (older turns are left out) and no KV cache is
    # kept between turns (kv_cache_mb: 0, a memory use by design, bounded by its own budget), so
    # every round is the same work: memory must level off, not climb with the messages.
    server = app_servers(model=gguf_path, extra_config={
        "max_new_tokens": 24, "max_input_tokens": 256, "kv_cache_mb": 0, "queue_size": 64})
    owner = secrets.token_hex(16)
    clients = [Client(server.url, verbose=False) for _ in range(CONVERSATIONS)]  # one per user
    conversations = [""] * CONVERSATIONS
    samples = [(0, rss_mb(server.proc.pid))]
    sent = cancelled = 0

    def one(slot: int, n: int) -> dict | None:
        job = clients[slot].submit(owner, conversations[slot], f"{QUESTIONS[(slot + n) % 8]} (#{n})",
                            api_name="/chat")
        if n % 10 == 9:  # every 10th one is cancelled mid-way, like a Stop
            for update in job:
                if update["text"]:
                    job.cancel()
                    break
            clients[slot] = Client(server.url, verbose=False)  # like a reloaded page
            return None
        return job.result(timeout=600)

    with ThreadPoolExecutor(CONVERSATIONS) as pool:
        while sent < MESSAGES:
            batch = min(CONVERSATIONS, MESSAGES - sent)
            finals = list(pool.map(lambda s: one(s, sent + s), range(batch)))
            for slot, final in enumerate(finals):
                if final is None:
                    cancelled += 1
                    continue
                assert final["status"] == "complete" and final["error"] is None, final
                conversations[slot] = final["conversation_id"]
            sent += batch
            samples.append((sent, rss_mb(server.proc.pid)))

    per_100 = [(n, round(mb)) for n, mb in samples if n % 100 == 0 or n == sent]
    print(f"\nsoak: {sent} messages, {cancelled} cancelled, RSS MB by messages sent: {per_100}"
          f"\nevery round: {[round(mb) for _, mb in samples]}")
    with sqlite3.connect(server.db_path) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM messages WHERE role = "
                                     "'assistant' GROUP BY status").fetchall())
        users = conn.execute("SELECT count(*) FROM messages WHERE role = 'user'").fetchone()[0]
    assert users == sent and statuses.get("error", 0) == 0, statuses
    assert statuses.get("complete", 0) >= sent - cancelled
    # Bounded: from the middle of the run (caches full, conversations at their cap) to the end,
    # memory grows by less than 50 MB.
    middle = samples[len(samples) // 2][1]
    assert max(mb for _, mb in samples[len(samples) // 2:]) - middle < 50, samples
