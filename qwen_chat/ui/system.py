"""What the page says about the app itself: the banner above the chat while the model loads
(or failed) or a save waits for the history file, and the System panel of the sidebar."""

from __future__ import annotations

import gradio as gr

from .. import i18n
from ..chat import LOW_SPACE_MB
from ..display import as_text
from .common import Page, lang_of


def system_text(service, lang: str) -> str:
    """The System panel: what runs, the history disk, the last reply's speed."""
    info = service.system()
    if info["loading"] is not None:
        info["precision"] = i18n.loading(lang, info["loading"])
    last = (i18n.text(lang, "last_reply", ttft=info["ttft"], tps=info["tokens_per_s"] or 0.0)
            if info["ttft"] is not None else i18n.text(lang, "none_yet"))
    free = info["disk_free_mb"]
    disk = (i18n.text(lang, "disk_unknown") if free is None else
            i18n.text(lang, "disk_low" if free < LOW_SPACE_MB else "disk_free", free=free))
    if info["history_busy"]:
        disk += " · " + i18n.text(lang, "history_busy")
    return i18n.text(lang, "system_table", **{**info, "last": last, "disk": disk})


def render_panel(page: Page) -> gr.Accordion:
    with gr.Accordion(page.t("system"), open=False, elem_id="system-panel") as panel:
        page.system_box = gr.Markdown("", elem_id="system")
    return panel


def render_banner(page: Page) -> tuple[gr.Markdown, gr.Timer]:
    return gr.Markdown("", visible=False, elem_id="model-status"), gr.Timer(1.0, active=False)


def wire(page: Page, demo: gr.Blocks, panel: gr.Accordion, banner: gr.Markdown,
         poll: gr.Timer) -> None:
    service, private = page.service, page.private

    def model_status(request: gr.Request):
        """The banner while the model loads (or failed) or a save waits for the history
        file, and whether to keep polling: (banner, timer)."""
        snapshot, lang = service.loading(), lang_of(request)
        if snapshot is None:
            if service.history_busy():  # told while this tab's message waits to be saved
                return (gr.update(value=f"⏳ **{i18n.text(lang, 'history_busy_banner')}**",
                                  visible=True), gr.Timer(active=True))
            # Looked at once a second while this tab has a message being saved or answered.
            return (gr.update(value="", visible=False),
                    gr.Timer(active=service.sending(request.session_hash)))
        if snapshot.phase == "failed":
            return (gr.update(value=f"⚠ {as_text(i18n.loading(lang, snapshot))}", visible=True),
                    gr.Timer(active=False))
        line = f"⏳ **{i18n.loading(lang, snapshot)}**  \n{i18n.text(lang, 'loading_hint')}"
        return gr.update(value=line, visible=True), gr.Timer(active=True)

    def panel_text(request: gr.Request) -> str:
        return system_text(service, lang_of(request))

    # While the model loads, the banner says how far it is, once a second, then goes away;
    # it is looked at while a message is saved and answered (a history file locked by another
    # program makes the save wait: the banner says so).
    demo.load(model_status, outputs=[banner, poll], queue=False, **private)
    poll.tick(model_status, outputs=[banner, poll], queue=False, **private)
    page.box.submit(lambda: gr.Timer(active=True), outputs=[poll], queue=False, **private)
    # The System panel: filled when opened, and by the chat after every reply.
    panel.expand(panel_text, outputs=[page.system_box], **private)
