"""The conversation sidebar: New chat, search, the list (listing.py: date groups, a menu per
row), import. Components are made by `render` (before the chat, which lists new conversations
in it) and wired by `wire` (after it, as they load conversations into the chat)."""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from .. import i18n
from ..errors import NotFound
from ..transfer import ImportRefused
from . import listing
from .common import Page, lang_of


@dataclass
class Sidebar:
    new_btn: gr.Button
    search: gr.Textbox
    exported: gr.File
    import_btn: gr.UploadButton


def render(page: Page) -> Sidebar:
    t = page.t
    new_btn = gr.Button(t("new_chat"), variant="primary", elem_id="new-chat")
    search = gr.Textbox(placeholder=t("search_placeholder"), show_label=False, lines=1,
                        max_lines=1, elem_id="search", container=False)
    page.conversations = gr.HTML(listing.listing([], None, "en"), elem_id="conversations",
                                 html_template=listing.TEMPLATE, css_template=listing.CSS,
                                 js_on_load=listing.JS, padding=False)
    exported = gr.File(label=t("export_file"), visible=False, interactive=False,
                       elem_id="exported")
    import_btn = gr.UploadButton(t("import_json"), size="sm", file_types=[".json"],
                                 type="filepath", elem_id="import")
    return Sidebar(new_btn, search, exported, import_btn)


def wire(page: Page, side: Sidebar) -> list:
    """Wire the sidebar's events; returns those after which the chat shows another
    conversation (or a new chat)."""
    service, private = page.service, page.private
    shown_chat = [page.chatbot, page.history, page.seen]

    def shown_list(owner, current, query, lang, jump=None) -> dict:
        """The list as it is to show: search results while the box holds a query."""
        query = " ".join((query or "").split())
        if not query:
            value = page.listing(owner, current, lang)
        else:
            pinned = {c.id for c in service.conversations(owner) if c.pinned}
            value = listing.results(service.search(owner, query), query, pinned, current, lang)
        if jump is not None:
            value["jump"] = {"index": jump, "nonce": time.time()}
        return value

    def open_conversation(owner, query, event: gr.EventData, request: gr.Request):
        """A row clicked: its conversation in the chat (a search result's at its match)."""
        data, lang = event._data or {}, lang_of(request)  # noqa: SLF001 - the trigger's payload
        conversation_id, index = data.get("id"), data.get("index")
        try:
            chat = page.chat_of(owner, conversation_id, lang)
        except NotFound:
            return (None, *page.shows([]), "", shown_list(owner, None, query, lang))
        jump = index if isinstance(index, int) and 0 <= index < len(chat) else None
        return (conversation_id, *page.shows(chat), "",
                shown_list(owner, conversation_id, query, lang, jump))

    def act(owner, current, query, event: gr.EventData, request: gr.Request):
        """A row's menu action: (current, chatbot, history, seen, list, exported file)."""
        data, lang = event._data or {}, lang_of(request)  # noqa: SLF001
        action, conversation_id = data.get("action"), data.get("id")
        if not (action and conversation_id):  # the component's own click on any of it
            return (gr.skip(),) * 6
        keep = (gr.skip(),) * 4
        file = gr.skip()
        with contextlib.suppress(NotFound):
            if action == "rename" and (data.get("title") or "").strip():
                service.rename(owner, conversation_id, str(data["title"]))
            elif action in ("pin", "unpin"):
                service.pin(owner, conversation_id, action == "pin")
            elif action == "confirm_delete":
                service.delete(owner, conversation_id)
                if conversation_id == current:
                    keep, current = (None, *page.shows([])), None
            elif action in ("export_md", "export_json"):
                file = export(owner, conversation_id, action.removeprefix("export_"))
        return (*keep, shown_list(owner, current, query, lang), file)

    def export(owner, conversation_id, kind: str):
        """The conversation written to a file the page offers for download."""
        name, text = service.export(owner, conversation_id, kind)
        path = Path(tempfile.mkdtemp(prefix="qwen-chat-export-")) / name
        path.write_text(text, encoding="utf-8")
        return gr.update(value=str(path), visible=True)

    def search(owner, current, query, request: gr.Request):
        return shown_list(owner, current, query, lang_of(request))

    def new_chat(owner, request: gr.Request):
        return (*page.new_chat(owner, lang_of(request)), "")

    def import_file(owner, upload, request: gr.Request):
        """Add an uploaded JSON export as a new conversation and open it."""
        lang = lang_of(request)
        try:
            conversation = service.import_export(owner, Path(upload).read_bytes())
        except (ImportRefused, OSError) as exc:
            gr.Warning(i18n.text(lang, "import_refused", reason=exc))
            return (gr.skip(),) * 6
        return (conversation.id, *page.shows(page.chat_of(owner, conversation.id, lang)),
                page.listing(owner, conversation.id, lang), "")

    # Leaving a conversation stops its reply (kept as "stopped"): the view belongs to the
    # conversation the user is looking at.
    switched = [page.conversations.select(open_conversation, [page.owner, side.search],
                              [page.current, *shown_chat, page.status, page.conversations],
                              cancels=page.replies, **private)]
    actions = dict(fn=act, inputs=[page.owner, page.current, side.search],
                   outputs=[page.current, *shown_chat, page.conversations, side.exported],
                   **private)
    page.conversations.click(**actions)  # rename, pin, export, delete another: the chat stays
    switched.append(page.conversations.submit(**actions, cancels=page.replies))  # delete it
    side.search.change(search, [page.owner, page.current, side.search], [page.conversations],
                       trigger_mode="always_last", show_progress="hidden", **private)
    # The chatbot's own clear icon only empties the view: it starts a new chat, deletes nothing.
    for trigger in (side.new_btn.click, page.chatbot.clear):
        switched.append(trigger(new_chat, [page.owner],
                [page.current, *shown_chat, page.status, page.conversations, side.search],
                cancels=page.replies, **private))
    switched.append(side.import_btn.upload(
        import_file, [page.owner, side.import_btn],
        [page.current, *shown_chat, page.conversations, side.search], cancels=page.replies,
        **private))
    return switched
