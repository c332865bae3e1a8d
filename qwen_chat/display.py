"""Messages as the page shows them: markdown that runs nothing and fetches nothing.

* HTML shows as text: outside code, `&` and `<` become entities, so no tag (a <script>, an
  <img onerror=...>) ever reaches the page; code is shown verbatim anyway.
* Images from other hosts are not loaded: the browser would fetch `![x](http://any.host/x.png)`
  as soon as it renders it, which tells that host the user's address and what was shown, and is
  the known way for a pasted document to make a model leak the chat (the conversation written
  into an image URL). Such an image becomes a link naming its host, opened only on a click,
  unless config.yaml says `allow_remote_images: true`. Images of the page itself (a path on
  this app, `data:`) are shown. Reference-style images (`![x][ref]`) are never images.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from . import i18n
from .store import COMPLETE, STREAMING, Message

# Fenced code blocks (closed, or still open while a reply streams) and inline code spans.
_CODE = re.compile(r"(```.*?(?:```|\Z)|`[^`\n]*`)", re.S)
# An inline image: ![alt](url) or ![alt](<url> "title"); alt without brackets or line breaks.
# Or a bare "![" (group 2 None), where no inline image starts.
_IMAGE = re.compile(r"!\[([^\[\]\n]*)\]\(\s*<?([^\s<>()]*)>?(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'))?\s*\)"
                    r"|!\[")


def _local(url: str) -> bool:
    """A URL the browser resolves on this app (a path, a fragment) or that needs no request."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "data":
        return True
    return not parts.scheme and not parts.netloc and not url.startswith("//")


def _image(match: re.Match) -> str:
    """An inline image kept (this app's own), made a link (another host), or a bare "![" shown
    as text (a reference-style image, a scheme such as file:)."""
    if match.group(2) is None:
        return "!\\["
    alt, url = match.group(1).strip(), match.group(2)
    if _local(url):
        return match.group(0)
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https") and not url.startswith("//"):
        return "!\\[" + match.group(0)[2:]
    host = urlsplit(url).hostname or url
    return f"[↗ {alt} · {host}]({url})" if alt else f"[↗ {host}]({url})"


def _text_part(part: str, remote_images: bool) -> str:
    part = part.replace("&", "&amp;").replace("<", "&lt;")
    return part if remote_images else _IMAGE.sub(_image, part)


def as_text(markdown: str, *, remote_images: bool = False) -> str:
    """Markdown to show: HTML as text, and images from other hosts as links (see above)."""
    parts = _CODE.split(markdown)
    return "".join(part if i % 2 else _text_part(part, remote_images)
                   for i, part in enumerate(parts))


def shown(message: Message, lang: str, *, remote_images: bool = False) -> dict:
    """A stored message as the chatbot shows it; a reply that did not complete says so."""
    content = as_text(message.content, remote_images=remote_images)
    if message.role == "assistant" and message.status not in (COMPLETE, STREAMING):
        note = i18n.text(lang, message.status if message.status in i18n.EN else "error")
        detail = f": {message.error}" if message.error else ""
        content = f"{content}\n\n*⚠ {note}{detail}*".strip()
    return {"role": message.role, "content": content}


def typed(displayed: str) -> str:
    """The markdown a user typed, from their message as the chat shows it (as_text's escapes
    undone): an edit of a sent message starts from what the chat shows."""
    parts = _CODE.split(displayed)
    return "".join(part if i % 2 else
                   part.replace("!\\[", "![").replace("&lt;", "<").replace("&amp;", "&")
                   for i, part in enumerate(parts))


def plain(content) -> str:
    """The text of a chat message's content: a string, or Gradio's list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    return "".join(block.get("text", "") for block in content or ()
                   if isinstance(block, dict) and block.get("type", "text") == "text")
