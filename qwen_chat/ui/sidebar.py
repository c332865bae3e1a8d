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
    export_all_btn: gr.Button


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
    with gr.Row():
        import_btn = gr.UploadButton(t("import_json"), size="sm", file_types=[".json", ".zip"],
                                     type="filepath", elem_id="import")
        export_all_btn = gr.Button(t("export_all"), size="sm", elem_id="export-all")
    return Sidebar(new_btn, search, exported, import_btn, export_all_btn)


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
            return (None, *page.shows([], None), "", shown_list(owner, None, query, lang))
        jump = index if isinstance(index, int) and 0 <= index < len(chat) else None
        return (conversation_id, *page.shows(chat, conversation_id), "",
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
                    keep, current = (None, *page.shows([], None)), None
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
        """Add the conversations of an uploaded export (ChatGPT's, DeepSeek's or this app's,
        .json or .zip) and open the newest one added."""
        lang = lang_of(request)
        try:
            result = service.import_file(owner, Path(upload).read_bytes())
        except (ImportRefused, OSError) as exc:
            gr.Warning(i18n.text(lang, "import_refused", reason=exc))
            return (gr.skip(),) * 6
        said = i18n.text(lang, "imported", count=result.added, source=result.source)
        if result.skipped:
            said += " " + i18n.text(lang, "imported_before", skipped=result.skipped)
        gr.Info(said)
        if result.newest is None:  # everything was there already
            return (gr.skip(),) * 6
        opened = result.newest.id
        return (opened, *page.shows(page.chat_of(owner, opened, lang), opened),
                page.listing(owner, opened, lang), "")

    def export_everything(owner):
        """Every conversation of this browser, as Markdown and JSON in one zip to download."""
        _, data = service.export_all(owner)
        path = Path(tempfile.mkdtemp(prefix="qwen-chat-export-")) / time.strftime(
            "qwen-chat-%Y%m%d-%H%M%S.zip")
        path.write_bytes(data)
        return gr.update(value=str(path), visible=True)

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
    side.export_all_btn.click(export_everything, [page.owner], [side.exported], **private)
    switched.append(side.import_btn.upload(
        import_file, [page.owner, side.import_btn],
        [page.current, *shown_chat, page.conversations, side.search], cancels=page.replies,
        **private))
    return switched
