"""Many users at once against the real app: eight clients sending together, a full queue.

Every request is answered, first come first served, each reply in its own conversation (checked
in SQLite), a waiting client is told its place in the queue, cancelling one request leaves the
others alone, and beyond `queue_size` a sender is told the app is busy.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

from gradio_client import Client

from tests.server import app_servers  # noqa: F401 - a fixture

CLIENTS = 8
SAME_INSTANT = 0.1  # seconds: replies dispatched together by the queue


def messages(db_path) -> list[dict]:
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(
            "SELECT m.*, c.owner FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "ORDER BY m.id")]


def test_eight_clients_at_once_are_answered_in_order_without_cross_talk(app_servers, tiny_dir):
    # Replies long enough that the first four still stream when the last client arrives (1 s
    # after the first): on a fast CPU the tiny model wrote 300 tokens before that.
    server = app_servers(model=tiny_dir, extra_config={"max_new_tokens": 1500, "temperature": 0.0,
                                                       "repetition_penalty": 1.0})
    owners = [secrets.token_hex(16) for _ in range(CLIENTS)]
    clients = [Client(server.url, verbose=False) for _ in range(CLIENTS)]
    jobs = []
    for i, (client, owner) in enumerate(zip(clients, owners)):
        jobs.append(client.submit(owner, "", f"client {i} asks: 第{i}个问题", api_name="/chat"))
        time.sleep(0.15)  # a definite arrival order
    # While the first replies stream, a later client is told where it stands in the queue.
    ranks = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not ranks:
        status = jobs[-1].status()
        if status.rank is not None and status.rank > 0:
            ranks.append(status.rank)
        time.sleep(0.05)
    assert ranks and ranks[0] >= 1, "the last client was never told its place in the queue"
    # Cancel client 3's request while it waits: the other seven are answered.
    jobs[3].cancel()
    answered = [i for i in range(CLIENTS) if i != 3]
    with ThreadPoolExecutor(CLIENTS) as pool:
        finals = list(pool.map(lambda i: jobs[i].result(timeout=300), answered))
    results = dict(zip(answered, finals))
    rows = messages(server.db_path)
    # The cancelled request never got a reply (it was still waiting) or got a stopped one.
    assert all(r["status"] == "stopped" for r in rows
               if r["owner"] == owners[3] and r["role"] == "assistant")
    for i in answered:
        assert results[i]["status"] == "complete", (i, results[i])
        mine = [r for r in rows if r["owner"] == owners[i]]
        user, reply = mine[0], mine[-1]
        # Each reply lands in its own conversation, after its own question.
        assert user["content"] == f"client {i} asks: 第{i}个问题"
        assert {r["conversation_id"] for r in mine} == {results[i]["conversation_id"]}
        assert reply["role"] == "assistant" and reply["content"] == results[i]["text"]
    # First come, first served: no reply started before one that arrived earlier. Up to
    # max_batch replies run at once, and when two slots free in the same instant, the two next
    # in line start together (their rows may be written a few ms apart, in either order).
    replies = [r for r in rows if r["role"] == "assistant"]
    started = {owners.index(r["owner"]): r["created_at"] for r in replies}
    late = [(i, j) for i in answered for j in answered
            if i < j and started[i] > started[j] + SAME_INSTANT]
    assert not late, (late, started)
    assert len({r["conversation_id"] for r in replies}) == len(replies)


def test_beyond_the_queue_size_a_sender_is_told_to_try_again(app_servers, tiny_dir):
    # Two replies generated together, two waiting: senders beyond those four are turned away
    # (replies long enough to still be running as the eight arrive, on a fast CPU too).
    server = app_servers(model=tiny_dir, extra_config={"max_new_tokens": 1500, "queue_size": 2,
                                                       "max_batch": 2, "temperature": 0.0,
                                                       "repetition_penalty": 1.0})
    owner = secrets.token_hex(16)
    jobs = [Client(server.url, verbose=False).submit(owner, "", f"question {i}", api_name="/chat")
            for i in range(8)]
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(job.result(timeout=300)["status"])
        except Exception as exc:  # noqa: BLE001 - the refusal is what we check
            outcomes.append(str(exc))
    busy = [o for o in outcomes if o != "complete"]
    assert busy and outcomes.count("complete") >= 4, outcomes
    assert all("queue is full" in o.lower() or "busy" in o.lower() for o in busy), busy
    # The refused questions were not stored; the answered ones were.
    stored = [r["content"] for r in messages(server.db_path) if r["role"] == "user"]
    assert len(stored) == outcomes.count("complete")
