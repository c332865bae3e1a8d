"""Files attached to messages: kept with their conversation, searched for what is asked.

A document (documents.py) is stored with the message it was sent with, its whole text and its
excerpts (documents.chunks), which SQLite FTS5 indexes with the trigram tokenizer (any language,
Chinese without word segmentation). What the model reads of it (`expand`):

* a short document goes in whole, before the words of its message, so that it is read (and
  prefilled while the question is typed) once, and stays in the cached prompt of later turns;
* a long one is represented by the excerpts that best match that message (BM25), within a
  share of the input budget, each labelled with its file and place ("[report.pdf, p. 17]") so
  the reply can cite it; the latest question also gets the excerpts that best match it.

Deleting a conversation deletes its attachments (foreign keys, ON DELETE CASCADE).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace

from .documents import Document, chunks

SHORT_TOKENS = 1500  # up to this, a document goes in whole (the input budget is 4,096 by default)
EXCERPTS = 6  # at most this many excerpts per question
EXCERPT_SHARE = 0.5  # of the input budget, for excerpts


@dataclass(frozen=True)
class Attachment:
    id: int
    conversation_id: str
    message_id: int
    name: str
    kind: str
    tokens: int
    places: int  # pages or sections

    @property
    def short(self) -> bool:
        return self.tokens <= SHORT_TOKENS


@dataclass(frozen=True)
class Excerpt:
    name: str
    place: str
    text: str

    @property
    def label(self) -> str:
        return f"[{self.name}, {self.place}]"


class Attachments:
    """The attachments of a store's conversations (tables of migration m009)."""

    def __init__(self, store) -> None:
        self.store = store

    def add(self, conversation_id: str, message_id: int, document: Document, tokens: int) -> None:
        parts = chunks(document)

        def insert() -> None:
            with self.store.db.atomic():
                table = self.store.db.table("attachments")
                table.insert(dict(conversation_id=conversation_id, message_id=message_id,
                                  name=document.name, kind=document.kind, tokens=tokens,
                                  places=len(document.sections), text=document.text,
                                  created_at=time.time()))
                attachment_id = table.last_pk
                self.store.db.table("attachment_chunks").insert_all(
                    dict(attachment_id=attachment_id, place=p.place, text=p.text) for p in parts)
        self.store._write(insert)

    def of(self, conversation_id: str) -> dict[int, list[Attachment]]:
        """The conversation's attachments, by the id of the message they came with."""
        with self.store._lock:
            rows = list(self.store.db.query(
                "SELECT id, conversation_id, message_id, name, kind, tokens, places "
                "FROM attachments WHERE conversation_id = ? ORDER BY id", [conversation_id]))
        out: dict[int, list[Attachment]] = {}
        for row in rows:
            out.setdefault(row["message_id"], []).append(Attachment(**row))
        return out

    def text(self, attachment_id: int) -> str:
        with self.store._lock:
            return next(self.store.db.query("SELECT text FROM attachments WHERE id = ?",
                                            [attachment_id]))["text"]

    def excerpts(self, attachments: list[Attachment], question: str, limit: int, *,
                 fallback: bool = True) -> list[Excerpt]:
        """The excerpts of `attachments` that best match `question` (BM25 over the trigram
        index), the best first; where nothing matches, the first ones (with `fallback`: the
        question the file was sent with may not name its words) or none."""
        ids = [a.id for a in attachments]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        terms = search_terms(question)
        with self.store._lock:
            rows = []
            if terms:
                try:
                    rows = list(self.store.db.query(
                        "SELECT a.name, c.place, c.text FROM attachment_chunks_fts f "
                        "JOIN attachment_chunks c ON c.rowid = f.rowid "
                        "JOIN attachments a ON a.id = c.attachment_id "
                        f"WHERE attachment_chunks_fts MATCH ? AND c.attachment_id IN ({marks}) "
                        "ORDER BY bm25(attachment_chunks_fts) LIMIT ?",
                        [" OR ".join(terms), *ids, limit]))
                except Exception:  # noqa: BLE001 - no FTS5 trigram in this SQLite: the start
                    rows = []
            if not rows and fallback:
                rows = list(self.store.db.query(
                    "SELECT a.name, c.place, c.text FROM attachment_chunks c "
                    "JOIN attachments a ON a.id = c.attachment_id "
                    f"WHERE c.attachment_id IN ({marks}) ORDER BY c.id LIMIT ?", [*ids, limit]))
        return [Excerpt(r["name"], r["place"], r["text"]) for r in rows]


STOP_WORDS = frozenset("""the and for are was were what when where which who whom whose why how
this that these those with from into about does did has have had can could would should will
you your yours our ours their them they its his her she him not but all any some than then
there here please tell give list show say said also just only very more most much many""".split())


def search_terms(question: str, most: int = 40) -> list[str]:
    """FTS5 phrases for `question` under the trigram tokenizer: its words of three or more
    characters (but the commonest English ones), and every three characters of a Chinese,
    Japanese or Korean run."""
    terms: list[str] = []
    for word in re.findall(r"[\w-]+", question):
        if re.search(r"[\u3000-\u9fff\uac00-\ud7af]", word):
            terms += [word[i:i + 3] for i in range(max(1, len(word) - 2)) if len(word[i:i + 3]) == 3]
        elif len(word) >= 3 and word.lower() not in STOP_WORDS:
            terms.append(word.lower())
    unique = list(dict.fromkeys(terms))[:most]
    return ['"' + t.replace('"', '""') + '"' for t in unique]


def document_block(name: str, text: str) -> str:
    return f'<document name="{name}">\n{text}\n</document>'


def excerpts_block(excerpts: list[Excerpt]) -> str:
    body = "\n\n".join(f"{e.label}\n{e.text}" for e in excerpts)
    return ("Excerpts of the attached documents (cite the ones you use, like "
            f"{excerpts[0].label}):\n\n{body}")


def expand(messages: list, attached: dict[int, list[Attachment]], store: Attachments,
           budget: int, count, memo=None) -> tuple[list, list[Excerpt]]:
    """`messages` (store.Message) with their documents written into the text the model reads,
    and the excerpts used for the last message (to cite under the reply). `memo` keeps what an
    earlier message with its own files expanded to (by its id, text, files and the budget):
    the same at every keystroke's prefill, so read and searched once. Any mapping with `get`
    and item assignment (reading.Kept)."""
    out, cited = [], []
    long_docs = [a for group in attached.values() for a in group if not a.short]
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    for i, m in enumerate(messages):
        own = attached.get(m.id, []) if m.role == "user" else []
        key = (m.id, m.content, tuple(a.id for a in own), budget) if own and i != last_user else None
        known = memo.get(key) if memo is not None and key is not None else None
        if known is not None:
            out.append(replace(m, content=known))
            continue
        blocks = [document_block(a.name, store.text(a.id)) for a in own if a.short]
        # The files a message was sent with; and for the latest question sent without any,
        # the conversation's long documents, where they match it.
        wanted = [a for a in own if not a.short] or (long_docs if i == last_user and not own else [])
        if wanted:
            excerpts = _fit(store.excerpts(wanted, m.content, EXCERPTS, fallback=bool(own)),
                            budget * EXCERPT_SHARE, count)
            if excerpts:
                blocks.append(excerpts_block(excerpts))
                if i == last_user:
                    cited = excerpts
        out.append(replace(m, content="\n\n".join([*blocks, m.content])) if blocks else m)
        if memo is not None and key is not None:
            memo[key] = out[-1].content
    return out, cited


def _fit(excerpts: list[Excerpt], tokens: float, count) -> list[Excerpt]:
    kept, used = [], 0
    for e in excerpts:
        n = count([{"role": "user", "content": e.text}])
        if used + n > tokens:
            break
        kept.append(e)
        used += n
    return kept


def sources_line(excerpts: list[Excerpt]) -> str:
    """"Sources: report.pdf p. 3, p. 17; notes.md lines 1-120" for the excerpts a reply used."""
    by_name: dict[str, list[str]] = {}
    for e in excerpts:
        places = by_name.setdefault(e.name, [])
        if e.place not in places:
            places.append(e.place)
    return "Sources: " + "; ".join(f"{n} {', '.join(p)}" for n, p in by_name.items())
