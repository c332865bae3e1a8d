"""Chat in the terminal: the same service, engine and SQLite conversations as the web page.

    python app.py --cli        (or ./start-cli.sh, start-cli.bat)

Conversations belong to a browser's anonymous owner id. The terminal works with the owner whose
conversation was used last (the browser you chat in), so the page and the terminal show the same
list; on a fresh install it keeps an owner of its own in data/cli.owner.
"""

from __future__ import annotations

import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, TextIO

from .chat import ChatService
from .errors import MessageTooLong, NotFound, StorageFull

HELP = """Commands:
  /new              start a new conversation
  /list             list the conversations (newest first)
  /switch N         continue conversation N of the list
  /export md|json   write the current conversation to a file
  /help             this help
  /quit             leave (or Ctrl+D); Ctrl+C stops a reply
Anything else is a message."""


def cli_owner(service: ChatService, data_dir: Path) -> str:
    """The owner of the most recently used conversation, else this terminal's own id."""
    return last_owner(service.store, data_dir)


def last_owner(store, data_dir: Path) -> str:
    """cli_owner from the store alone (`python -m qwen_chat import/export`)."""
    rows = list(store.db.query(
        "SELECT owner FROM conversations ORDER BY updated_at DESC LIMIT 1"))
    if rows:
        return rows[0]["owner"]
    path = data_dir / "cli.owner"
    if not path.exists():
        path.write_text(secrets.token_hex(16), encoding="utf-8")
    return path.read_text(encoding="utf-8").strip()


class TerminalChat:
    def __init__(self, service: ChatService, owner: str, *, out: TextIO = sys.stdout,
                 read: Callable[[str], str] = input, export_dir: Path = Path.cwd()):
        self.service, self.owner, self.out, self.read = service, owner, out, read
        self.export_dir = export_dir
        self.current: str | None = None

    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def run(self) -> int:
        self.say("Qwen Chat in the terminal. Type a message; /help for commands. "
                 "输入消息开始聊天；/help 查看命令。")
        while True:
            try:
                line = self.read("\nyou> ")
            except (EOFError, KeyboardInterrupt):
                self.say()
                return 0
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if self.command(line) == "quit":
                    return 0
            else:
                self.send(line)

    def command(self, line: str) -> str | None:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return "quit"
        if name == "/new":
            self.current = None
            self.say("New conversation: your next message starts it.")
        elif name == "/list":
            listing = self.service.conversations(self.owner)
            if not listing:
                self.say("No conversations yet.")
            for i, c in enumerate(listing, 1):
                mark = "*" if c.id == self.current else " "
                self.say(f"{mark}{i:3}. {c.title}")
        elif name == "/switch":
            self.switch(arg)
        elif name == "/export":
            self.export(arg or "md")
        else:
            self.say(HELP)
        return None

    def switch(self, arg: str) -> None:
        listing = self.service.conversations(self.owner)
        if not arg.isdigit() or not 1 <= int(arg) <= len(listing):
            self.say(f"Use /switch N with N from 1 to {len(listing)} (see /list).")
            return
        conversation = listing[int(arg) - 1]
        self.current = conversation.id
        self.say(f"Switched to: {conversation.title}")
        for m in self.service.messages(self.owner, conversation.id)[-6:]:
            self.say(f"{'you' if m.role == 'user' else 'qwen'}> {m.content}")

    def export(self, kind: str) -> None:
        if kind not in ("md", "json"):
            self.say("Use /export md or /export json.")
            return
        if not self.current:
            self.say("Nothing to export yet: send a message or /switch to a conversation.")
            return
        name, text = self.service.export(self.owner, self.current, kind)
        path = self.export_dir / name
        path.write_text(text, encoding="utf-8")
        self.say(f"Exported to {path.resolve()}")

    def send(self, text: str) -> None:
        if self.current and not self.service.exists(self.owner, self.current):
            self.say("That conversation was deleted (in the page): this message starts a new one.")
            self.current = None
        updates = self.service.send(self.owner, self.current, text)
        shown, final = "", None
        interrupted = threading.Event()  # Ctrl+C during a reply stops the reply, not the app
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
        self.say("qwen> ", end="")
        try:
            for update in updates:
                self.current, final = update.conversation.id, update
                if len(update.text) > len(shown):
                    self.say(update.text[len(shown):], end="")
                    shown = update.text
                if interrupted.is_set():
                    updates.close()  # the reply is saved as stopped
                    self.say("\n(stopped)")
                    return
        except (MessageTooLong, StorageFull) as exc:
            self.say(f"\n{exc}")
            return
        except NotFound:
            self.say("\nThat conversation no longer exists.")
            self.current = None
            return
        finally:
            signal.signal(signal.SIGINT, previous)
        self.say()
        if final is not None and final.error:
            self.say(f"(error: {final.error})")
        elif final is not None and final.stats.ttft is not None:
            tps = f" · {final.stats.tokens_per_s:.1f} tokens/s" if final.stats.tokens_per_s else ""
            self.say(f"({final.status}: first token {final.stats.ttft:.2f} s{tps})")
