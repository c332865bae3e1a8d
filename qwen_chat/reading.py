"""The chat service's half that reads attached files: what they cost, and what the model reads.

A file is read (documents.py) when it is attached, before the message is sent: a file that
cannot be read is refused then, with one sentence, and the page shows what a readable one
costs (its tokens, and about how long this computer takes to read them, from the speed of the
last prompts it read). While the question is typed, a short document is prefilled with it
(`draft_text`), so that Send has only the question's last words left to read. Once sent, the
files are stored with the message (attachments.py) and written into what the model reads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from . import attachments, documents
from .attachments import Attachments, Excerpt
from .documents import Document
from .store import Message

DEFAULT_RATE = 300.0  # prompt tokens a second before any was measured (2 cores, int8)
PARSED_KEPT = 16
EXPANDED_KEPT = 256  # earlier messages' files as written in (attachments.expand's memo)
LONG_CHARS = 60_000  # beyond this a document's tokens are estimated, not counted (it is long)
CHARS_PER_TOKEN = 3.0


class Kept:
    """A memo of at most `size` entries, the oldest dropped first; safe to share between the
    threads of several tabs (each call holds its lock for the call alone)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            return self._entries.get(key, default)

    def __setitem__(self, key, value) -> None:
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


@dataclass(frozen=True)
class ReadFile:
    document: Document
    tokens: int

    @property
    def short(self) -> bool:
        return self.tokens <= attachments.SHORT_TOKENS


class Reading:
    store: object
    engine: object

    def _init_reading(self) -> None:
        self.attachments = Attachments(self.store)
        self._parsed = Kept(PARSED_KEPT)  # (path, size, mtime) -> ReadFile
        self._expanded = Kept(EXPANDED_KEPT)  # attachments.expand's memo
        self.prefill_rate: float | None = None  # prompt tokens a second, last measured

    def read_file(self, path: str) -> ReadFile:
        """The file at `path` read and counted (kept for a while: a file attached is read
        again at every keystroke's prefill and at Send); documents.DocumentRefused if not."""
        p = Path(path)
        stat = p.stat()
        key = (str(p), stat.st_size, stat.st_mtime_ns)
        found = self._parsed.get(key)
        if found is not None:
            return found
        document = documents.read(p.name, p.read_bytes())
        if document.chars > LONG_CHARS or not self.engine.ready:
            tokens = int(document.chars / CHARS_PER_TOKEN)
        else:
            tokens = self.engine.count_tokens([{"role": "user", "content": document.text}])
        found = ReadFile(document, tokens)
        self._parsed[key] = found
        return found

    def reading_cost(self, read: ReadFile) -> tuple[int, float]:
        """(tokens the model reads of it with one question, seconds this computer takes)."""
        tokens = read.tokens if read.short else int(
            self.input_budget() * attachments.EXCERPT_SHARE)  # type: ignore[attr-defined]
        return tokens, tokens / (self.prefill_rate or DEFAULT_RATE)

    def draft_text(self, text: str, files: list[str] | None) -> str:
        """What the model will read of a message with `files` attached, as far as it can be
        known before it is sent: its short documents, then its words."""
        blocks = []
        for path in files or []:
            try:
                read = self.read_file(path)
            except (documents.DocumentRefused, OSError):
                continue
            if read.short:
                blocks.append(attachments.document_block(read.document.name, read.document.text))
        return "\n\n".join([*blocks, text])

    def store_files(self, conversation_id: str, message_id: int, files: list[str] | None) -> None:
        for path in files or []:
            read = self.read_file(path)
            self.attachments.add(conversation_id, message_id, read.document, read.tokens)

    def with_documents(self, stored: list[Message], budget: int) -> tuple[list[Message], list[Excerpt]]:
        """`stored` with their documents written in (attachments.expand), and the excerpts the
        last message's reply should cite."""
        conversation_id = next((m.conversation_id for m in stored if m.conversation_id), None)
        attached = self.attachments.of(conversation_id) if conversation_id else {}
        if not attached:
            return stored, []
        return attachments.expand(stored, attached, self.attachments, budget,
                                  self.engine.count_tokens, memo=self._expanded)

    def measured_prefill(self, new_tokens: int, seconds: float | None) -> None:
        """A reply's prompt was read: `new_tokens` in `seconds` (long enough ones count)."""
        if seconds and new_tokens >= 32:
            self.prefill_rate = new_tokens / seconds
