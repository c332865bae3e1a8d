"""The conversation sidebar: new chat, the list, rename, delete (after a confirmation), export
and import. Components are made by `render` (before the chat, which lists new conversations
in it) and wired by `wire` (after it, as they load conversations into the chat)."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from .. import i18n
from ..errors import NotFound
from ..transfer import ImportRefused
from .common import Page, lang_of


@dataclass
class Sidebar:
    new_btn: gr.Button
    title_box: gr.Textbox
    rename_btn: gr.Button
    delete_btn: gr.Button
    confirm_box: gr.Group
    yes_btn: gr.Button
    no_btn: gr.Button
    export_md: gr.Button
    export_json: gr.Button
    exported: gr.File
    import_btn: gr.UploadButton


def render(page: Page) -> Sidebar:
    t = page.t
    gr.Markdown(f"### {t('conversations')}")
    new_btn = gr.Button(t("new_chat"), variant="primary", elem_id="new-chat")
    page.conversations = gr.Radio(choices=[], show_label=False, elem_id="conversations")
    with gr.Row():
        title_box = gr.Textbox(placeholder=t("rename_placeholder"), show_label=False, scale=3,
                               elem_id="rename-box")
        rename_btn = gr.Button(t("rename"), size="sm", scale=1, elem_id="rename")
    delete_btn = gr.Button(t("delete"), size="sm", variant="stop", elem_id="delete")
    with gr.Group(visible=False) as confirm_box:
        gr.Markdown(t("confirm_delete"))
        with gr.Row():
            yes_btn = gr.Button(t("yes_delete"), size="sm", variant="stop",
                                elem_id="confirm-delete")
            no_btn = gr.Button(t("cancel"), size="sm")
    with gr.Row():
        export_md = gr.Button(t("export_md"), size="sm", elem_id="export-md")
        export_json = gr.Button(t("export_json"), size="sm", elem_id="export-json")
    exported = gr.File(label=t("export_file"), visible=False, interactive=False,
                       elem_id="exported")
    import_btn = gr.UploadButton(t("import_json"), size="sm", file_types=[".json"],
                                 type="filepath", elem_id="import")
    return Sidebar(new_btn, title_box, rename_btn, delete_btn, confirm_box, yes_btn, no_btn,
                   export_md, export_json, exported, import_btn)


def wire(page: Page, side: Sidebar) -> None:
    service, private = page.service, page.private
    shown_chat = [page.chatbot, page.history, page.seen]

    def open_conversation(owner, conversation_id, request: gr.Request):
        try:
            return (conversation_id, *page.shows(page.chat_of(owner, conversation_id,
                                                              lang_of(request))), "")
        except NotFound:
            return (None, *page.shows([]), "")

    def rename(owner, current, title):
        if current and title and title.strip():
            service.rename(owner, current, title)
        return page.listing(owner, current), ""

    def delete(owner, current):
        if current:
            with contextlib.suppress(NotFound):
                service.delete(owner, current)
        return (None, *page.shows([]), page.listing(owner, None), gr.update(visible=False))

    def exporter(kind: str):
        def export(owner, current, request: gr.Request):
            """Write the open conversation to a file the page offers for download."""
            if not current:
                gr.Warning(i18n.text(lang_of(request), "nothing_to_export"))
                return gr.update(value=None, visible=False)
            try:
                name, text = service.export(owner, current, kind)
            except NotFound:
                return gr.update(value=None, visible=False)
            path = Path(tempfile.mkdtemp(prefix="qwen-chat-export-")) / name
            path.write_text(text, encoding="utf-8")
            return gr.update(value=str(path), visible=True)
        return export

    def import_file(owner, upload, request: gr.Request):
        """Add an uploaded JSON export as a new conversation and open it."""
        lang = lang_of(request)
        try:
            conversation = service.import_export(owner, Path(upload).read_bytes())
        except (ImportRefused, OSError) as exc:
            gr.Warning(i18n.text(lang, "import_refused", reason=exc))
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return (conversation.id, *page.shows(page.chat_of(owner, conversation.id, lang)),
                page.listing(owner, conversation.id))

    # Leaving a conversation stops its reply (kept as "stopped"): the view belongs to the
    # conversation the user is looking at.
    page.conversations.input(open_conversation, [page.owner, page.conversations],
                             [page.current, *shown_chat, page.status], cancels=page.replies,
                             **private)
    # The chatbot's own clear icon only empties the view: it starts a new chat, deletes nothing.
    for trigger in (side.new_btn.click, page.chatbot.clear):
        trigger(lambda: (None, *page.shows([]), gr.update(value=None), ""),
                outputs=[page.current, *shown_chat, page.conversations, page.status],
                cancels=page.replies, **private)
    for trigger in (side.rename_btn.click, side.title_box.submit):
        trigger(rename, [page.owner, page.current, side.title_box],
                [page.conversations, side.title_box], **private)
    side.delete_btn.click(lambda c: gr.update(visible=bool(c)), [page.current],
                          [side.confirm_box], **private)
    side.no_btn.click(lambda: gr.update(visible=False), outputs=[side.confirm_box], **private)
    side.yes_btn.click(delete, [page.owner, page.current],
                       [page.current, *shown_chat, page.conversations, side.confirm_box],
                       cancels=page.replies, **private)
    for button, kind in ((side.export_md, "md"), (side.export_json, "json")):
        button.click(exporter(kind), [page.owner, page.current], [side.exported], **private)
    side.import_btn.upload(import_file, [page.owner, side.import_btn],
                           [page.current, *shown_chat, page.conversations],
                           cancels=page.replies, **private)
