"""`engine: openai`: this app's page and history in front of another server's model, tested for
real against a second instance of this app serving its own /v1 API."""

from __future__ import annotations

import sqlite3

import openai
from gradio_client import Client

from tests.server import app_servers, free_port  # noqa: F401 - app_servers is a fixture

QUESTION = "What is the capital of France?"
SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def stored(db_path) -> list[tuple[str, str, str]]:
    if not db_path.exists():
        return []
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT role, content, status FROM messages ORDER BY id").fetchall()


def test_the_page_in_front_of_another_servers_model(app_servers, gguf_path):
    backend = app_servers(model=gguf_path, name="backend", extra_config={"temperature": 0.0})
    front = app_servers(model=gguf_path.name, name="front", extra_config={
        "engine": "openai", "base_url": backend.url + "v1", "temperature": 0.0})
    assert "Replies come from" in front.log_tail()

    owner = "f" * 32
    client = Client(front.url, verbose=False)
    first = client.predict(owner, "", QUESTION, api_name="/chat")
    assert first["status"] == "complete" and "Paris" in first["text"], first
    assert first["ttft"] > 0 and first["new_tokens"] > 0
    # The same words the backend's model gives to the same messages (greedy).
    direct = openai.OpenAI(base_url=backend.url + "v1", api_key="none").chat.completions.create(
        model=gguf_path.name, temperature=0, max_tokens=48,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}])
    assert first["text"] == direct.choices[0].message.content

    # A second turn goes with its history; everything is stored by the front, nothing by the
    # backend (its /v1 API keeps no state).
    second = client.predict(owner, first["conversation_id"], "And of Germany?", api_name="/chat")
    assert second["status"] == "complete" and second["text"]
    assert [r[0] for r in stored(front.db_path)] == ["user", "assistant", "user", "assistant"]
    assert stored(front.db_path)[1][1] == first["text"]
    assert stored(backend.db_path) == []


def test_an_unreachable_server_is_a_clear_error_and_the_message_is_kept(app_servers, tiny_dir):
    front = app_servers(model="some-model", extra_config={
        "engine": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"})
    final = Client(front.url, verbose=False).predict("g" * 32, "", "hello?", api_name="/chat")
    assert final["status"] == "error" and "cannot reach" in final["error"], final
    assert [(r[0], r[2]) for r in stored(front.db_path)] == [("user", "complete"), ("assistant", "error")]
