"""Import from ChatGPT and DeepSeek, export everything, and import that back: through the
chat service's store (a real SQLite file) and through `python -m qwen_chat`. The export
fixtures are written by hand to the formats' public descriptions (see qwen_chat/imports.py)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from qwen_chat.library import export_all, import_file
from qwen_chat.store import Store
from qwen_chat.transfer import ImportRefused

REPO = Path(__file__).resolve().parent.parent
OWNER = "o" * 32


def gpt_node(node_id, parent, children, role=None, text=None, t=None, **extra):
    message = None
    if role is not None:
        message = {"id": node_id, "author": {"role": role, "name": None, "metadata": {}},
                   "create_time": t, "update_time": None,
                   "content": {"content_type": "text", "parts": [text]},
                   "status": "finished_successfully", "end_turn": True, "weight": 1.0,
                   "metadata": extra.pop("metadata", {}), "recipient": extra.pop("recipient", "all")}
    return {"id": node_id, "message": message, "parent": parent, "children": children}


def chatgpt_export() -> list[dict]:
    """Two conversations. The first has an edited question (two user branches) and, on the
    branch the user kept, a regenerated answer; current_node is the second answer."""
    nodes = [
        gpt_node("root", None, ["sys"]),
        gpt_node("sys", "root", ["q1"], "system", "", 1700000000.0,
                 metadata={"is_visually_hidden_from_conversation": True}),
        gpt_node("q1", "sys", ["a1"], "user", "What is the capital of France?", 1700000010.0),
        gpt_node("a1", "q1", ["q2", "q2b"], "assistant", "Paris.", 1700000011.0),
        gpt_node("q2", "a1", ["a2"], "user", "And of Spain?", 1700000020.0),  # before the edit
        gpt_node("a2", "q2", [], "assistant", "Madrid.", 1700000021.0),
        gpt_node("q2b", "a1", ["tool", "a2b-first"], "user", "And of Italy?", 1700000030.0),
        gpt_node("tool", "q2b", [], "assistant", "search('Italy')", 1700000031.0, recipient="browser"),
        gpt_node("a2b-first", "q2b", [], "assistant", "Milan.", 1700000032.0),
        gpt_node("a2b", "q2b", [], "assistant", "Rome.", 1700000040.0),  # regenerated: current
    ]
    nodes[6]["children"].append("a2b")
    first = {"title": "Capitals", "create_time": 1700000000.0, "update_time": 1700000040.0,
             "mapping": {n["id"]: n for n in nodes}, "current_node": "a2b",
             "conversation_id": "gpt-1", "id": "gpt-1", "moderation_results": [],
             "default_model_slug": "gpt-4o"}
    second = {"title": "你好", "create_time": 1710000000.0, "update_time": 1710000100.0,
              "mapping": {"r": gpt_node("r", None, ["u"]),
                          "u": gpt_node("u", "r", ["a"], "user", "你好！", 1710000000.0),
                          "a": gpt_node("a", "u", [], "assistant", "你好，有什么可以帮你？", 1710000100.0)},
              "current_node": "a", "conversation_id": "gpt-2", "id": "gpt-2"}
    return [first, second]


def ds_message(kind_texts, t):
    return {"files": [], "model": "deepseek-reasoner", "inserted_at": t,
            "fragments": [{"type": kind, "content": text} for kind, text in kind_texts]}


def deepseek_export() -> list[dict]:
    """One conversation whose answer was regenerated (node 1 has two children; "3" is newer),
    with reasoning (THINK) that is not reply text, continued on the newer branch."""
    mapping = {
        "root": {"id": "root", "parent": None, "children": ["1"], "message": None},
        "1": {"id": "1", "parent": "root", "children": ["2", "3"],
              "message": ds_message([("REQUEST", "1+1 等于几？")], "2025-03-30T04:49:37.018000+08:00")},
        "2": {"id": "2", "parent": "1", "children": [],
              "message": ds_message([("THINK", "Adding."), ("RESPONSE", "3")], "2025-03-30T04:49:40+08:00")},
        "3": {"id": "3", "parent": "1", "children": ["4"],
              "message": ds_message([("THINK", "Let me add."), ("RESPONSE", "等于 2。")],
                                    "2025-03-30T04:50:00+08:00")},
        "4": {"id": "4", "parent": "3", "children": ["5"],
              "message": ds_message([("REQUEST", "Thanks!")], "2025-03-30T04:50:20+08:00")},
        "5": {"id": "5", "parent": "4", "children": [],
              "message": ds_message([("RESPONSE", "You're welcome.")], "2025-03-30T04:50:29.156000+08:00")},
    }
    return [{"id": "801e9692-c784-4402-bac6-d97a4722e943", "title": "简单加法",
             "inserted_at": "2025-03-30T04:49:36.505000+08:00",
             "updated_at": "2025-03-30T04:50:29.156000+08:00", "mapping": mapping}]


def zipped(files: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "chat.db")
    yield s
    s.close()


def shown(store, owner=OWNER) -> dict:
    return {c.title: [(m.role, m.content) for m in store.messages(owner, c.id)]
            for c in store.list_conversations(owner)}


def test_chatgpt_zip_imports_the_branch_the_user_saw_with_titles_and_times(store):
    raw = zipped({"conversations.json": json.dumps(chatgpt_export()), "chat.html": "<html></html>",
                  "message_feedback.json": "[]", "user.json": "{}"})
    result = import_file(store, OWNER, raw)
    assert (result.source, result.added, result.skipped) == ("ChatGPT", 2, 0)
    assert shown(store) == {
        "你好": [("user", "你好！"), ("assistant", "你好，有什么可以帮你？")],
        "Capitals": [("user", "What is the capital of France?"), ("assistant", "Paris."),
                     ("user", "And of Italy?"), ("assistant", "Rome.")]}
    capitals = next(c for c in store.list_conversations(OWNER) if c.title == "Capitals")
    assert (capitals.created_at, capitals.updated_at) == (1700000000.0, 1700000040.0)
    times = [m.created_at for m in store.messages(OWNER, capitals.id)]
    assert times == [1700000010.0, 1700000011.0, 1700000030.0, 1700000040.0]
    assert result.newest.title == "你好"  # the most recent: the page opens it

    again = import_file(store, OWNER, json.dumps(chatgpt_export()).encode())  # the bare .json
    assert (again.added, again.skipped, again.newest) == (0, 2, None)
    assert len(store.list_conversations(OWNER)) == 2
    assert len(store.list_conversations("x" * 32)) == 0  # another browser's list is its own


def test_deepseek_follows_the_regenerated_answer_and_leaves_thinking_out(store):
    raw = zipped({"conversations.json": json.dumps(deepseek_export(), ensure_ascii=False),
                  "user.json": "{}"})
    result = import_file(store, OWNER, raw)
    assert (result.source, result.added) == ("DeepSeek", 1)
    assert shown(store) == {"简单加法": [("user", "1+1 等于几？"), ("assistant", "等于 2。"),
                                     ("user", "Thanks!"), ("assistant", "You're welcome.")]}
    (c,) = store.list_conversations(OWNER)
    assert c.created_at == pytest.approx(1743281376.505) and c.updated_at == pytest.approx(1743281429.156)
    assert import_file(store, OWNER, raw).skipped == 1


def test_export_all_round_trips_through_import(store, tmp_path):
    import_file(store, OWNER, json.dumps(chatgpt_export()).encode())
    import_file(store, OWNER, json.dumps(deepseek_export()).encode())
    count, data = export_all(store, OWNER)
    assert count == 3
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert sorted(names) == sorted(f"{t}.{k}" for t in ("Capitals", "你好", "简单加法") for k in ("md", "json"))
    other = Store(tmp_path / "other.db")
    try:
        result = import_file(other, OWNER, data)
        assert (result.source, result.added) == ("Qwen Chat", 3)
        assert shown(other) == shown(store)
        assert [(c.title, c.created_at, c.updated_at) for c in other.list_conversations(OWNER)] == \
               [(c.title, c.created_at, c.updated_at) for c in store.list_conversations(OWNER)]
        assert import_file(other, OWNER, data).skipped == 3
    finally:
        other.close()


@pytest.mark.parametrize("raw, reason", [
    (b"\x00\x01 not an export", "neither a zip nor JSON"),
    (json.dumps({"hello": "world"}).encode(), "not an export of ChatGPT, DeepSeek or Qwen Chat"),
    (zipped({"notes.txt": "hi"}), "no conversations.json"),
    (b"PK\x03\x04 broken zip", "cannot be read"),
])
def test_a_foreign_file_is_one_clear_sentence_and_nothing_is_stored(store, raw, reason):
    with pytest.raises(ImportRefused, match=reason):
        import_file(store, OWNER, raw)
    assert store.list_conversations(OWNER) == []


def test_a_broken_conversation_refuses_the_whole_file(store):
    """One transaction: the first conversation is fine, the second names a node it lacks."""
    export = chatgpt_export()
    export[1]["current_node"] = "missing"
    with pytest.raises(ImportRefused, match="conversation 2 of this ChatGPT export"):
        import_file(store, OWNER, json.dumps(export).encode())
    assert store.list_conversations(OWNER) == []


def run(args, config) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qwen_chat", "--config", str(config), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_command_line_imports_and_exports_everything(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("data_dir: data\n", encoding="utf-8")
    source = tmp_path / "chatgpt.zip"
    source.write_bytes(zipped({"conversations.json": json.dumps(chatgpt_export())}))
    first = run(["import", str(source)], config)
    assert first.returncode == 0 and "Imported 2 conversation(s) from ChatGPT." in first.stdout
    again = run(["import", str(source)], config)
    assert "Imported 0 conversation(s) from ChatGPT; 2 were already here." in again.stdout

    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    refused = run(["import", str(bad)], config)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("Nothing imported: the file is not an export")

    out = tmp_path / "all.zip"
    exported = run(["export", "--all", str(out)], config)
    assert exported.returncode == 0 and "Exported 2 conversation(s)" in exported.stdout
    assert len(zipfile.ZipFile(out).namelist()) == 4
    assert run(["export", "--all", str(out)], config).returncode == 1  # never overwritten
    store = Store(tmp_path / "data" / "chat.db")
    try:  # the terminal's own owner id: no browser has used this data folder
        (owner,) = {r["owner"] for r in store.db.query("SELECT owner FROM conversations")}
        assert sorted(shown(store, owner)) == ["Capitals", "你好"]
    finally:
        store.close()
