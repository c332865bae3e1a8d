"""A file attached to a message, as text the model can read: its sections and their places.

Plain text, Markdown and source files are decoded (UTF-8, UTF-16 with a BOM, else GB18030:
Chinese files from Windows are often GBK); a PDF is read page by page with pypdf ("p. 3"), a
Word file paragraph by paragraph with python-docx, its headings naming the sections ("§ Results").
Each place becomes a `Section`, so an excerpt can say where it comes from; `chunks` cuts sections
into excerpts for search (attachments.py indexes them).

A file that cannot be read is refused with one sentence (DocumentRefused): too big, damaged,
password-protected, a scan without text, or not a text format at all. Nothing here stores.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import PurePath

MAX_BYTES = 20 * 1024 * 1024
MAX_CHARS = 2_000_000  # about 600,000 tokens: more than any context, and searchable
MAX_PAGES = 2000
CHUNK_CHARS = 1200  # an excerpt: about 300-400 tokens of English, fewer characters of Chinese
OVERLAP = 150
TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".csv", ".tsv", ".json", ".yaml", ".yml",
                 ".toml", ".ini", ".cfg", ".xml", ".html", ".htm", ".css", ".log", ".tex",
                 ".py", ".js", ".ts", ".tsx", ".jsx", ".java", ".kt", ".c", ".h", ".cpp", ".hpp",
                 ".cc", ".cs", ".go", ".rs", ".rb", ".php", ".swift", ".m", ".scala", ".sh",
                 ".bat", ".ps1", ".sql", ".r", ".lua", ".pl", ".dart", ".vue", ".svelte"}
SUFFIXES = TEXT_SUFFIXES | {".pdf", ".docx"}


class DocumentRefused(ValueError):
    """The file cannot be read as text: the message says why, in words a user can act on."""


@dataclass(frozen=True)
class Section:
    place: str  # "p. 3", "§ Results", "lines 1-120"
    text: str


@dataclass(frozen=True)
class Document:
    name: str
    kind: str  # "pdf", "docx", "text"
    sections: tuple[Section, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)

    @property
    def chars(self) -> int:
        return sum(len(s.text) for s in self.sections)


def read(name: str, raw: bytes) -> Document:
    """The document in `raw` (the file named `name`); DocumentRefused if it cannot be read."""
    name = PurePath(name).name or "document"
    suffix = PurePath(name).suffix.lower()
    if len(raw) > MAX_BYTES:
        raise DocumentRefused(f"{name} is over {MAX_BYTES // 2**20} MB")
    if suffix == ".pdf" or raw[:5] == b"%PDF-":
        sections, kind = _pdf(name, raw), "pdf"
    elif suffix == ".docx":
        sections, kind = _docx(name, raw), "docx"
    elif suffix in TEXT_SUFFIXES or not suffix:
        sections, kind = _text(name, raw), "text"
    else:
        raise DocumentRefused(f"{name} is not a file this app reads (text, Markdown, PDF, Word "
                              ".docx or source code)")
    sections = tuple(s for s in sections if s.text.strip())
    if not sections:
        raise DocumentRefused(f"{name} has no text to read" + (
            " (a scan? it holds only images)" if kind == "pdf" else ""))
    if sum(len(s.text) for s in sections) > MAX_CHARS:
        raise DocumentRefused(f"{name} holds more than {MAX_CHARS:,} characters of text")
    return Document(name, kind, sections)


def _decode(raw: bytes) -> str | None:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return None


def _text(name: str, raw: bytes) -> list[Section]:
    text = _decode(raw)
    if text is None or "\x00" in text:
        raise DocumentRefused(f"{name} is not text (a binary file?)")
    lines = text.replace("\r\n", "\n").split("\n")
    step = 120  # lines per section: an excerpt can say "lines 241-360"
    return [Section(f"lines {i + 1}-{min(i + step, len(lines))}", "\n".join(lines[i:i + step]))
            for i in range(0, len(lines), step)]


def _pdf(name: str, raw: bytes) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentRefused(f"{name} is protected by a password: save a copy without one")
        if len(reader.pages) > MAX_PAGES:
            raise DocumentRefused(f"{name} has more than {MAX_PAGES:,} pages")
        return [Section(f"p. {i + 1}", _tidy(page.extract_text() or ""))
                for i, page in enumerate(reader.pages)]
    except DocumentRefused:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError, AttributeError) as exc:
        raise DocumentRefused(f"{name} cannot be read as a PDF (damaged? {exc})") from None
    except Exception as exc:  # noqa: BLE001 - pypdf raises others on damaged files
        if type(exc).__name__ in ("FileNotDecryptedError", "DependencyError"):
            raise DocumentRefused(f"{name} is protected by a password: save a copy without "
                                  "one") from None
        raise DocumentRefused(f"{name} cannot be read as a PDF (damaged?)") from None


def _docx(name: str, raw: bytes) -> list[Section]:
    try:
        import docx
        from docx.opc.exceptions import PackageNotFoundError

        document = docx.Document(io.BytesIO(raw))
    except (PackageNotFoundError, KeyError, ValueError, OSError) as exc:
        raise DocumentRefused(f"{name} cannot be read as a Word .docx file (damaged, or a "
                              f"protected or old .doc? {type(exc).__name__})") from None
    except Exception:  # noqa: BLE001 - a zip that is no Word file, an encrypted one
        raise DocumentRefused(f"{name} cannot be read as a Word .docx file (damaged, or "
                              "protected?)") from None
    sections, heading, parts = [], "start", []
    for paragraph in document.paragraphs:
        style = (paragraph.style.name or "").lower() if paragraph.style is not None else ""
        if style.startswith(("heading", "title")) and paragraph.text.strip():
            if parts:
                sections.append(Section(f"§ {heading}", "\n".join(parts)))
            heading, parts = paragraph.text.strip()[:60], [paragraph.text]
        elif paragraph.text.strip():
            parts.append(paragraph.text)
    for table in document.tables:
        parts += [" | ".join(cell.text for cell in row.cells) for row in table.rows]
    if parts:
        sections.append(Section(f"§ {heading}", "\n".join(parts)))
    return sections


def _tidy(text: str) -> str:
    return re.sub(r"[ \t]+\n", "\n", text).strip()


def chunks(document: Document, size: int = CHUNK_CHARS, overlap: int = OVERLAP) -> list[Section]:
    """Excerpts of about `size` characters, each within one section (so it keeps its place),
    cut at a paragraph or sentence end where one is near, overlapping by `overlap`."""
    out = []
    for section in document.sections:
        text, start = section.text, 0
        while start < len(text):
            end = min(len(text), start + size)
            if end < len(text):
                window = text[start + size // 2:end]
                cut = max(window.rfind("\n"), window.rfind("。"), window.rfind(". "))
                if cut >= 0:
                    end = start + size // 2 + cut + 1
            out.append(Section(section.place, text[start:end].strip()))
            if end >= len(text):
                break
            start = max(end - overlap, start + 1)
    return [c for c in out if c.text]
