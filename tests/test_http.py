"""Qwen Chat as a script (gradio_client) and a user starting it see it: a real `python app.py`.

* A question streams back word by word, ends "complete" and is saved in data/chat.db; the
  conversation goes on over Gradio's HTTP protocol (README.md's curl example); after a
  restart the same owner still finds the conversation, another owner finds nothing.
* Start-up mistakes end at once with one plain message and a non-zero exit code: a misspelt key
  in config.yaml, a port already in use. A download that fails (the page is served meanwhile)
  is told in the terminal, in the reply to a message and by /health.
"""

from __future__ import annotations

import secrets
import socket
import sqlite3

import pytest

from tests.server import app_servers, free_port, run_app  # noqa: F401 - app_servers is a fixture

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"


def client_for(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


def read_rows(db_path, sql, args=()):
    """Rows of the app's SQLite file, opened read-only as a backup tool would."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql, args)]
    finally:
        conn.close()


def test_streamed_answer_is_saved_and_survives_a_restart(app_servers, gguf_path):
    server = app_servers(model=gguf_path)
    owner = secrets.token_hex(16)

    job = client_for(server).submit(owner, "", QUESTION, api_name="/chat")
    updates = list(job)  # every streamed update, in order
    assert updates, f"no update from /chat; log:\n{server.log_tail()}"
    final = updates[-1]
    assert final["status"] == "complete", final
    assert final["error"] is None
    assert "Paris" in final["text"], final["text"]
    assert final["new_tokens"] > 0 and final["ttft"] is not None and final["ttft"] > 0

    # The reply arrives in pieces: several distinct partial texts, each extending the last.
    partial = [u["text"] for u in updates if u["status"] == "streaming" and u["text"]]
    distinct = list(dict.fromkeys(partial))
    assert len(distinct) > 1, f"the reply did not stream: {distinct}"
    for shorter, longer in zip(distinct, distinct[1:] + [final["text"]]):
        assert longer.startswith(shorter) and len(longer) >= len(shorter), (shorter, longer)
    assert {u["conversation_id"] for u in updates} == {final["conversation_id"]}
    conversation_id = final["conversation_id"]

    # Saved: the conversation belongs to this owner, with the question and the complete reply.
    convs = read_rows(server.db_path, "SELECT * FROM conversations")
    assert [(c["id"], c["owner"], c["title"]) for c in convs] == [(conversation_id, owner,
                                                                   QUESTION)]
    rows = read_rows(server.db_path, "SELECT * FROM messages WHERE conversation_id = ? "
                     "ORDER BY id", [conversation_id])
    assert [(r["role"], r["status"]) for r in rows] == [("user", "complete"),
                                                         ("assistant", "complete")]
    user, reply = rows
    assert user["content"] == QUESTION
    assert reply["content"] == final["text"]
    assert reply["new_tokens"] == final["new_tokens"] > 0
    assert reply["prompt_tokens"] > 0
    assert reply["ttft"] is not None and reply["ttft"] > 0
    assert reply["error"] is None

    # The same route over HTTP, as README.md's curl example reads it: the conversation goes on.
    events = chat_over_http(server.url, owner, conversation_id, "And of Italy?")
    assert [name for name, _ in events][-1] == "complete", events
    texts = [data["text"] for name, data in events if data["text"]]
    assert len(set(texts)) > 1, f"the reply did not stream: {texts}"
    assert events[-1][1]["conversation_id"] == conversation_id
    rows = read_rows(server.db_path, "SELECT role, content, status FROM messages "
                     "WHERE conversation_id = ? ORDER BY id", [conversation_id])
    assert [tuple(r.values()) for r in rows[2:]] == [
        ("user", "And of Italy?", "complete"), ("assistant", events[-1][1]["text"], "complete")]

    # Restart over the same data folder: the owner's history is still there, and only theirs.
    server.restart()
    client = client_for(server)
    listed = client.predict(owner, api_name="/conversations")
    assert [c["id"] for c in listed] == [conversation_id]
    assert listed[0]["title"] == QUESTION
    assert listed[0]["messages"] == [
        {"role": "user", "content": QUESTION, "status": "complete"},
        {"role": "assistant", "content": final["text"], "status": "complete"},
        {"role": "user", "content": "And of Italy?", "status": "complete"},
        {"role": "assistant", "content": events[-1][1]["text"], "status": "complete"}]
    assert client.predict(secrets.token_hex(16), api_name="/conversations") == []

    # Another owner who learns the id cannot write into the conversation: a plain error.
    with pytest.raises(Exception, match="not found"):
        client.predict(secrets.token_hex(16), conversation_id, "let me in", api_name="/chat")
    assert len(read_rows(server.db_path, "SELECT id FROM messages")) == 4


def chat_over_http(url: str, owner: str, conversation_id: str, message: str) -> list[tuple[str, dict]]:
    """/chat over Gradio's HTTP protocol (README.md's curl example), as bench/app.py reads it:
    the reply's server-sent events, as (event name, update) pairs."""
    from bench.drivers import chat_client, chat_events

    with chat_client(url, timeout=120) as http:
        return list(chat_events(http, owner, conversation_id, message))


def test_misspelt_config_key_names_the_key_and_the_fix(tmp_path):
    result = run_app(tmp_path, {"temprature": 0.5, "port": free_port()}, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "temprature" in output
    assert "Did you mean 'temperature'" in output
    assert "Traceback" not in output


def test_unreachable_hub_says_could_not_download_and_suggests_a_mirror(tmp_path, app_servers):
    """The page is served while the model downloads; when the download fails, the terminal and
    a message sent meanwhile say why and what to do, and /health reports the error."""
    closed_port = free_port()  # nothing listens there: every download is refused at once
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port}", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": None, "HF_HUB_CACHE": None, "HUGGINGFACE_HUB_CACHE": None,
           "QWEN_CHAT_CACHE": str(tmp_path / "cache")}
    server = app_servers(model="Qwen/Qwen2.5-0.5B-Instruct", env=env, ready=False)
    job = client_for(server).submit(secrets.token_hex(16), "", QUESTION, api_name="/chat")
    final = list(job)[-1]
    assert final["status"] == "error", final
    assert "Could not download the model 'Qwen/Qwen2.5-0.5B-Instruct'" in final["error"], final
    assert "HF_ENDPOINT=https://hf-mirror.com" in final["error"], final
    assert server.health() == (503, {"status": "error", "message": "the model could not be "
                                     "loaded: see the app's terminal or page"})
    output = server.log_tail(200)
    assert "Could not download" in output, output
    assert "HF_ENDPOINT" in output and "mirror" in output, output
    assert "modelscope:Qwen/Qwen2.5-0.5B-Instruct" in output, output
    assert "Traceback" not in output, output
    # The question is kept, with the reply marked as an error, for a retry after a fix.
    rows = read_rows(server.db_path, "SELECT role, status FROM messages ORDER BY id")
    assert [(r["role"], r["status"]) for r in rows] == [("user", "complete"), ("assistant", "error")]


def test_port_in_use_names_the_port_and_the_setting(tmp_path, gguf_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_app(tmp_path, {"model": str(gguf_path), "port": port}, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert str(port) in output and "port:" in output, output
    assert "Traceback" not in output, output
