"""Chat with a document: files read (text, Chinese text, source, PDF, Word), refused with one
sentence when they cannot be, stored with their message, searched for the question (Chinese
too), written into what the model reads, prefilled while the question is typed, and cited."""

from __future__ import annotations

import io
import json
import sqlite3
from dataclasses import replace

import pytest

from qwen_chat import attachments, documents
from qwen_chat.chat import ChatService
from qwen_chat.config import ConfigWatcher, load_config
from qwen_chat.documents import DocumentRefused
from qwen_chat.engine.local import Engine
from qwen_chat.store import Message, Store

OWNER = "d" * 32


def pdf_bytes(pages: list[str]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    return bytes(pdf.output())


def docx_bytes() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Introduction", level=1)
    document.add_paragraph("The lighthouse keeper counts ships every night.")
    document.add_heading("Results", level=1)
    document.add_paragraph("Forty-two ships passed in March.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def encrypted_pdf() -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes(["secret page"]))))
    writer.encrypt("hunter2")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def test_files_are_read_with_their_places():
    pdf = documents.read("report.pdf", pdf_bytes(["First page about tea.", "Second page about coffee."]))
    assert pdf.kind == "pdf" and [s.place for s in pdf.sections] == ["p. 1", "p. 2"]
    assert "coffee" in pdf.sections[1].text
    word = documents.read("notes.docx", docx_bytes())
    assert [s.place for s in word.sections] == ["§ Introduction", "§ Results"]
    assert "Forty-two ships" in word.sections[1].text
    chinese = documents.read("笔记.txt", "第一行：西湖在杭州。\n第二行".encode("gb18030"))
    assert chinese.sections[0].text.startswith("第一行：西湖在杭州。")
    code = documents.read("app.py", b"def main():\n    return 42\n")
    assert code.kind == "text" and code.sections[0].place == "lines 1-3"


@pytest.mark.parametrize("name, raw, reason", [
    ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "cannot be read as a PDF"),
    ("locked.pdf", None, "protected by a password"),
    ("scan.pdf", None, "has no text"),
    ("old.docx", b"PK\x03\x04 not a word file", "cannot be read as a Word"),
    ("tool.exe", b"MZ\x90\x00", "not a file this app reads"),
    ("data.txt", b"\x00\x01\x02\xff\xfe\x00binary", "not text"),
])
def test_an_unreadable_file_is_one_clear_sentence(name, raw, reason):
    if name == "locked.pdf":
        raw = encrypted_pdf()
    if name == "scan.pdf":
        raw = pdf_bytes([""])
    with pytest.raises(DocumentRefused, match=reason):
        documents.read(name, raw)


def test_an_oversized_file_is_refused(monkeypatch):
    monkeypatch.setattr(documents, "MAX_BYTES", 100)
    with pytest.raises(DocumentRefused, match="over 0 MB"):
        documents.read("big.txt", b"x" * 101)


def test_excerpts_keep_their_place_and_overlap():
    text = "\n".join(f"Sentence number {i} of the long report." for i in range(200))
    doc = documents.Document("r.txt", "text", (documents.Section("p. 9", text),))
    parts = documents.chunks(doc, size=400, overlap=50)
    assert len(parts) > 10 and all(p.place == "p. 9" and len(p.text) <= 400 for p in parts)
    assert "".join(p.text for p in parts).count("Sentence number 199") >= 1


def test_search_terms_cover_chinese_without_segmentation():
    assert attachments.search_terms("西湖在哪里") == ['"西湖在"', '"湖在哪"', '"在哪里"']
    assert attachments.search_terms("Where is the lighthouse?") == ['"lighthouse"']


@pytest.fixture
def service(tmp_path, tiny_model):
    config_path = tmp_path / "config.yaml"
    config_path.write_text("max_new_tokens: 6\ntemperature: 0\n", encoding="utf-8")
    store = Store(tmp_path / "chat.db")
    yield ChatService(store, Engine(*tiny_model), ConfigWatcher(config_path, load_config(config_path)))
    store.close()


def prompt_of(service, conversation_id):
    """What the model read to answer the conversation's last question."""
    stored = service.messages(OWNER, conversation_id)
    last = max(i for i, m in enumerate(stored) if m.role == "user")
    return service._prompt(service.config().config, stored[:last + 1])


def test_a_short_document_goes_in_whole_before_its_question(service, tmp_path):
    note = tmp_path / "note.md"
    note.write_text("# Shopping\nThe list says: tea, rice, 青菜.", encoding="utf-8")
    read = service.read_file(str(note))
    assert read.short and read.tokens > 0
    tokens, seconds = service.reading_cost(read)
    assert tokens == read.tokens and seconds > 0
    final = list(service.send(OWNER, None, "What is on the list?", files=[str(note)]))[-1]
    cid = final.conversation.id
    last = prompt_of(service, cid).messages[-1]["content"]
    assert last.startswith('<document name="note.md">\n# Shopping') and last.endswith("What is on the list?")
    assert [m.content for m in service.messages(OWNER, cid)][0] == "What is on the list?"
    (attached,) = service.attachments.of(cid).values()
    assert [a.name for a in attached] == ["note.md"]
    # The next turn still reads it (from its message), in the same place: the cache holds.
    list(service.send(OWNER, cid, "And how many items?"))
    messages = prompt_of(service, cid).messages
    assert [m["content"].startswith("<document") for m in messages if m["role"] == "user"] == [True, False]


def test_a_short_document_is_prefilled_while_the_question_is_typed(service, tmp_path):
    note = tmp_path / "recipe.txt"
    note.write_text("Boil the noodles for nine minutes. " * 20, encoding="utf-8")
    question = "How long do the noodles boil?"
    service.draft(OWNER, None, question[:-5], session="tab", files=[str(note)]).wait(30)
    final = list(service.send(OWNER, None, question, session="tab", files=[str(note)]))[-1]
    read = service.read_file(str(note))
    assert final.stats.cached_tokens >= read.tokens  # the document was read before Send
    # what is left at Send: the question's last characters and the assistant's header
    assert final.stats.prompt_tokens - final.stats.cached_tokens < 20


def test_a_long_document_is_searched_and_the_reply_cites_it(service, tmp_path, monkeypatch):
    monkeypatch.setattr(attachments, "SHORT_TOKENS", 50)  # so that this one counts as long
    pages = [f"Page {i + 1} talks about ordinary things, weather and roads." for i in range(30)]
    pages[16] = "Page 17: the lighthouse keeper counted 4,211 ships."
    report = tmp_path / "report.pdf"
    report.write_bytes(pdf_bytes(pages))
    final = list(service.send(OWNER, None, "How many ships did the lighthouse keeper count?",
                              files=[str(report)]))[-1]
    cid = final.conversation.id
    last = prompt_of(service, cid).messages[-1]["content"]
    assert last.startswith("Excerpts of the attached documents")
    first = last.index("\n\n[report.pdf, ") + 2  # the excerpts, the best first
    assert last[first:].startswith("[report.pdf, p. 17]\nPage 17: the lighthouse keeper counted 4,211 ships.")
    assert final.text.rsplit("\n\n", 1)[-1].startswith("Sources: report.pdf p. 17")
    stored = service.messages(OWNER, cid)[-1]
    assert stored.content == final.text  # the citation is saved with the reply


def test_a_chinese_question_finds_its_excerpt(service, tmp_path, monkeypatch):
    monkeypatch.setattr(attachments, "SHORT_TOKENS", 50)
    lines = [f"第{i + 1}段：今天天气很好，我们去公园散步。" for i in range(300)]
    lines[211] = "第212段：灯塔在岛的北边，晚上会亮。"
    notes = tmp_path / "游记.txt"
    notes.write_text("\n".join(lines), encoding="utf-8")
    final = list(service.send(OWNER, None, "灯塔在岛的哪边？", files=[str(notes)]))[-1]
    last = prompt_of(service, final.conversation.id).messages[-1]["content"]
    assert "灯塔在岛的北边" in last.split("\n\n[", 2)[1]  # the best excerpt comes first
    assert "Sources: 游记.txt lines 121-240" in final.text


def test_an_edited_or_retried_message_keeps_its_documents(service, tmp_path):
    note = tmp_path / "note.md"
    note.write_text("The list says: tea, rice, 青菜.", encoding="utf-8")
    final = list(service.send(OWNER, None, "What is on the list?", files=[str(note)]))[-1]
    cid = final.conversation.id
    list(service.send(OWNER, cid, "Thanks."))
    list(service.send(OWNER, cid, "What is on the list, in order?", keep=0))  # an edit
    stored = service.messages(OWNER, cid)
    assert [m.content for m in stored if m.role == "user"] == ["What is on the list, in order?"]
    assert [[a.name for a in v] for v in service.attachments.of(cid).values()] == [["note.md"]]
    assert list(service.attachments.of(cid)) == [stored[0].id]
    assert prompt_of(service, cid).messages[-1]["content"].startswith('<document name="note.md">')
    list(service.send(OWNER, cid, "What is on the list, in order?", keep=0))  # a retry
    stored = service.messages(OWNER, cid)
    assert len(stored) == 2 and list(service.attachments.of(cid)) == [stored[0].id]
    db = sqlite3.connect(service.store.path)
    try:  # one copy of the file, its search index with it
        assert db.execute("SELECT COUNT(*) FROM attachments").fetchone() == (1,)
        assert db.execute("SELECT COUNT(*) FROM attachment_chunks_fts WHERE attachment_chunks_fts "
                          "MATCH '\"rice\"'").fetchone() == (1,)
    finally:
        db.close()


def test_typing_reads_an_earlier_messages_file_once(service, tmp_path, monkeypatch):
    """Every keystroke's prefill builds the prompt again: an earlier message's file is written
    in from memory, the same text; an edited message (other words) is expanded afresh."""
    note = tmp_path / "note.md"
    note.write_text("The list says: tea, rice, 青菜.", encoding="utf-8")
    cid = list(service.send(OWNER, None, "What is on the list?", files=[str(note)]))[-1].conversation.id
    reads = []
    text = service.attachments.text
    monkeypatch.setattr(service.attachments, "text", lambda i: reads.append(i) or text(i))
    budget = service.input_budget()
    stored = service.messages(OWNER, cid)
    draft = Message(0, cid, "user", "And the price?", 0.0)
    first, _ = service.with_documents([*stored, draft], budget)
    for typed in ("And the price", "And the price of tea?"):
        again, _ = service.with_documents([*stored, replace(draft, content=typed)], budget)
        assert again[0].content == first[0].content
    assert first[0].content.startswith('<document name="note.md">') and len(reads) == 1
    edited = [replace(stored[0], content="What is on the list, in order?"), *stored[1:], draft]
    assert service.with_documents(edited, budget)[0][0].content.endswith("in order?")
    assert len(reads) == 2


def test_deleting_the_conversation_deletes_its_documents(service, tmp_path):
    note = tmp_path / "n.txt"
    note.write_text("lighthouse " * 50, encoding="utf-8")
    final = list(service.send(OWNER, None, "Read this.", files=[str(note)]))[-1]
    service.delete(OWNER, final.conversation.id)
    db = sqlite3.connect(service.store.path)
    try:
        assert db.execute("SELECT COUNT(*) FROM attachments").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM attachment_chunks").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM attachment_chunks_fts WHERE attachment_chunks_fts "
                          "MATCH '\"lighthouse\"'").fetchone() == (0,)
    finally:
        db.close()


def test_documents_survive_a_restart(tmp_path, tiny_model):
    config_path = tmp_path / "config.yaml"
    config_path.write_text("max_new_tokens: 4\n", encoding="utf-8")
    note = tmp_path / "n.txt"
    note.write_text("The code is 7391.", encoding="utf-8")
    store = Store(tmp_path / "chat.db")
    first = ChatService(store, Engine(*tiny_model), ConfigWatcher(config_path, load_config(config_path)))
    cid = list(first.send(OWNER, None, "Remember this.", files=[str(note)]))[-1].conversation.id
    store.close()
    note.unlink()  # the upload is gone; the database keeps the text
    store = Store(tmp_path / "chat.db")
    try:
        again = ChatService(store, Engine(*tiny_model), ConfigWatcher(config_path, load_config(config_path)))
        assert "The code is 7391." in prompt_of(again, cid).messages[-1]["content"]
        assert json.dumps([a.name for g in again.attachments.of(cid).values() for a in g]) == '["n.txt"]'
    finally:
        store.close()
