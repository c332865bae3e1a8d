"""Conversations from elsewhere: ChatGPT's and DeepSeek's data exports, and this app's own.

The format is told from the content, never the file's name: a zip holding `conversations.json`
(ChatGPT: Settings, Data controls, Export; DeepSeek: Settings, Data, Export all chats), that file
itself, a zip of this app's `export --all`, or one of its conversation exports. Each becomes an
`Imported` conversation (title, times, messages) with a key that names its source, so that
importing the same file again adds nothing twice (store.py keeps the keys).

* ChatGPT: each conversation's `mapping` is a tree of nodes (`message`, `parent`, `children`);
  regenerated answers and edited questions are branches, and `current_node` is the leaf of the
  branch the user last saw: followed from there up to the root. Hidden system nodes (the
  model's instructions, `is_visually_hidden_from_conversation`), tool output and empty messages
  are left out; times are Unix seconds.
* DeepSeek: `mapping` from "root" down; each message is a list of `fragments` typed REQUEST
  (the user's words), RESPONSE (the answer) or THINK (the reasoning, not shown as reply text);
  where an answer was regenerated a node has several children: the latest is followed. Times
  are ISO 8601 strings.

Nothing here touches the database: a bad file is refused (ImportRefused, one sentence) before
anything is written, and store.py writes a whole file in one transaction.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .digests import json_digest
from .store import COMPLETE
from .transfer import FORMAT, ImportRefused, parse_export_data

MAX_FILE_BYTES = 256 * 1024 * 1024  # an export of years of chats is tens of MB
MAX_CONVERSATIONS = 100_000


@dataclass
class Imported:
    key: str  # "chatgpt:<id>", "deepseek:<id>", "qwen-chat:<id or digest>": its source
    title: str
    created_at: float
    updated_at: float
    messages: list[dict] = field(default_factory=list)  # role, content, status, created_at


def read(raw: bytes) -> tuple[str, list[Imported]]:
    """(the format's name, its conversations) from a file's bytes; ImportRefused otherwise."""
    if len(raw) > MAX_FILE_BYTES:
        raise ImportRefused(f"the file is over {MAX_FILE_BYTES // 2**20} MB")
    if raw[:4] == b"PK\x03\x04":
        return _read_zip(raw)
    return _read_json(_json(raw, "the file"))


def _json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        raise ImportRefused(f"{what} is neither a zip nor JSON: choose the export file (a .zip, "
                            "or the conversations.json inside it)") from None


def _read_zip(raw: bytes) -> tuple[str, list[Imported]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        members = [i for i in archive.infolist() if not i.is_dir()]
        total = sum(i.file_size for i in members)
        if total > 4 * MAX_FILE_BYTES:  # a zip bomb, or not an export
            raise ImportRefused("the zip unpacks to more than an export could hold")
        main = next((i for i in members if i.filename.rsplit("/", 1)[-1] == "conversations.json"), None)
        if main is not None:
            return _read_json(_json(archive.read(main), "conversations.json"))
        ours = [i for i in members if i.filename.endswith(".json")]
        conversations = []
        for info in ours:
            data = _json(archive.read(info), info.filename)
            if isinstance(data, dict) and data.get("format") == FORMAT:
                conversations.append(_qwen_chat(data))
        if conversations:
            return "Qwen Chat", conversations
    except (zipfile.BadZipFile, OSError, RuntimeError) as exc:  # RuntimeError: encrypted
        raise ImportRefused(f"the zip cannot be read ({exc})") from None
    raise ImportRefused("the zip holds no conversations.json (ChatGPT, DeepSeek) and no Qwen "
                        "Chat export")


def _read_json(data: Any) -> tuple[str, list[Imported]]:
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return "Qwen Chat", [_qwen_chat(data)]
    if isinstance(data, list) and data and all(isinstance(c, dict) for c in data):
        if len(data) > MAX_CONVERSATIONS:
            raise ImportRefused(f"the file holds over {MAX_CONVERSATIONS:,} conversations")
        if all("mapping" in c and "current_node" in c for c in data):
            return "ChatGPT", [c for c in (_chatgpt(c, i) for i, c in enumerate(data)) if c.messages]
        if all("mapping" in c and "inserted_at" in c for c in data):
            return "DeepSeek", [c for c in (_deepseek(c, i) for i, c in enumerate(data)) if c.messages]
    raise ImportRefused("the file is not an export of ChatGPT, DeepSeek or Qwen Chat (their "
                        "conversations.json is a list of conversations, each with a \"mapping\")")


def _qwen_chat(data: dict) -> Imported:
    title, messages = parse_export_data(data)  # decoded once (the whole file's size is checked)
    created = _number(data.get("created_at"))
    ident = data.get("id") if isinstance(data.get("id"), str) else json_digest(messages)[:32]
    times = [_number(m.get("created_at")) for m in data["messages"] if isinstance(m, dict)]
    for m, t in zip(messages, times):
        m["created_at"] = t or created
    return Imported(f"qwen-chat:{ident}", title, created or 0.0,
                    _number(data.get("updated_at")) or max([created or 0.0, *filter(None, times)]),
                    messages)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _iso(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _bad(source: str, index: int, what: str) -> ImportRefused:
    return ImportRefused(f"conversation {index + 1} of this {source} export {what}; nothing was "
                         "imported")


def _chatgpt(c: dict, index: int) -> Imported:
    mapping = c.get("mapping")
    if not isinstance(mapping, dict):
        raise _bad("ChatGPT", index, "has no message tree (\"mapping\")")
    branch, node_id, seen = [], c.get("current_node"), set()
    while node_id is not None and node_id not in seen:  # from the leaf the user last saw up
        seen.add(node_id)
        node = mapping.get(node_id)
        if not isinstance(node, dict):
            raise _bad("ChatGPT", index, f"names a message \"{node_id}\" it does not hold")
        branch.append(node)
        node_id = node.get("parent")
    messages = []
    for node in reversed(branch):
        m = node.get("message")
        if not isinstance(m, dict):
            continue
        role = (m.get("author") or {}).get("role")
        metadata = m.get("metadata") or {}
        # Only what the user saw of the conversation: no system instructions, no tool calls
        # (an assistant message addressed to a tool) or tool output.
        if (role not in ("user", "assistant") or m.get("recipient", "all") != "all"
                or metadata.get("is_visually_hidden_from_conversation")):
            continue
        content = m.get("content") or {}
        parts = content.get("parts") if isinstance(content, dict) else None
        text = "".join(p for p in parts or [] if isinstance(p, str)).strip() if isinstance(parts, list) else ""
        if not text and isinstance(content, dict) and isinstance(content.get("text"), str):
            text = content["text"].strip()
        if not text:
            continue
        messages.append({"role": role, "content": text, "status": COMPLETE,
                         "created_at": _number(m.get("create_time"))})
    created = _number(c.get("create_time")) or 0.0
    ident = c.get("conversation_id") or c.get("id") or json_digest(c)[:32]
    _fill_times(messages, created)
    return Imported(f"chatgpt:{ident}", str(c.get("title") or ""), created,
                    _number(c.get("update_time")) or created, messages)


def _deepseek(c: dict, index: int) -> Imported:
    mapping = c.get("mapping")
    if not isinstance(mapping, dict):
        raise _bad("DeepSeek", index, "has no message tree (\"mapping\")")
    node = mapping.get("root") or next((n for n in mapping.values()
                                        if isinstance(n, dict) and not n.get("parent")), None)
    messages, seen = [], set()
    while isinstance(node, dict) and node.get("id") not in seen:
        seen.add(node.get("id"))
        m = node.get("message")
        if isinstance(m, dict):
            when = _iso(m.get("inserted_at"))
            for kind, role in (("REQUEST", "user"), ("RESPONSE", "assistant")):
                text = "".join(f.get("content") or "" for f in m.get("fragments") or []
                               if isinstance(f, dict) and f.get("type") == kind).strip()
                if text:
                    messages.append({"role": role, "content": text, "status": COMPLETE,
                                     "created_at": when})
        children = [mapping.get(k) for k in node.get("children") or [] if isinstance(mapping.get(k), dict)]
        # A regenerated answer: the latest branch (the newest message, else the last child).
        node = max(enumerate(children), key=lambda ic: (_iso((ic[1].get("message") or {}).get("inserted_at")) or 0, ic[0]),
                   default=(0, None))[1]
    created = _iso(c.get("inserted_at")) or 0.0
    _fill_times(messages, created)
    return Imported(f"deepseek:{c.get('id') or index}", str(c.get("title") or ""), created,
                    _iso(c.get("updated_at")) or created, messages)


def _fill_times(messages: list[dict], created: float) -> None:
    last = created
    for m in messages:
        m["created_at"] = m.get("created_at") or last
        last = m["created_at"]
