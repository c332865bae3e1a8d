"""The web page: Gradio Blocks over the chat service, no SQL and no model code here. Built from
small builders, each making its components and wiring its own events: the sidebar
(conversations), the chat (ChatInterface), the chat's settings and presets, the system banner
and panel, and the page kept live with changes made elsewhere (live.py).

Each browser gets a stable anonymous owner id kept in gr.BrowserState (encrypted with a secret
from the data folder, so it survives restarts); every call to the service is scoped to it.
"""

from __future__ import annotations

import secrets

import gradio as gr

from .. import i18n
from ..chat import ChatService
from . import phone as phone_ui
from . import chat, habits, live, settings, sidebar, system
from .common import MAX_TABS, GENERATE, Page, lang_of, tell

__all__ = ["GENERATE", "build_ui", "launch_options"]

CSS = """
#title h1, #title p { font-size: 1.6em; font-weight: 700; margin: 0; }
#status { min-height: 1.5em; opacity: .75; font-size: .9em; }
#attached { font-size: .9em; }
.phone-qr { text-align: center; } .phone-digits { font-size: 1.4em; letter-spacing: .15em; }
.phone-link code { word-break: break-all; font-size: .8em; }
#attach-row { align-items: center; gap: .5em; }
#model-status { padding: .5em .8em; border-radius: 8px; background: var(--color-accent-soft); }
#chatbot .message-row.found .message { outline: 2px solid var(--color-accent); }
"""


def build_ui(service: ChatService, *, secret: str, phone: phone_ui.PhoneAccess | None = None) -> gr.Blocks:
    with gr.Blocks(title="Qwen Chat", analytics_enabled=False) as demo:
        page = Page(service, gr.I18n(**i18n.TRANSLATIONS),
                    owner=gr.BrowserState(None, storage_key="qwen_chat_owner", secret=secret),
                    current=gr.State(None), told=gr.State(None), seen=gr.State(0),
                    settings=gr.State({}), files=gr.State([]))
        with gr.Sidebar(open=True):
            side = sidebar.render(page)
            if phone is not None:
                phone_ui.render(page, phone)
            panel = system.render_panel(page)
        with gr.Row(elem_id="header"):
            gr.Markdown(page.t("title"), elem_id="title")
            gr.Button("🌓", elem_id="theme-toggle", size="sm", scale=0, variant="secondary")
        gr.Markdown(page.t("subtitle"), elem_id="subtitle")
        banner, poll = system.render_banner(page)
        chat.render(page)
        chat_settings = settings.render(page)
        live_timer, synced = live.render()
        switched = sidebar.wire(page, side)
        system.wire(page, demo, panel, banner, poll)

        def on_load(owner, told, request: gr.Request):
            """This browser's identity and its newest conversation, opened."""
            lang = lang_of(request)
            _, told, notes = page.read_config(told, lang)  # a page opened after a bad save
            tell(notes)
            # A paired phone sees the conversations of the browser that paired it.
            owner = (phone.owner_of(request) if phone is not None else None) or owner \
                or secrets.token_hex(16)
            convs = service.conversations(owner)
            current = convs[0].id if convs else None
            return (owner, page.listing(owner, current, lang), current,
                    *page.shows(page.chat_of(owner, current, lang), current), "", told)

        switched.append(demo.load(
            on_load, [page.owner, page.told],
            [page.owner, page.conversations, page.current, page.chatbot, page.history,
             page.seen, page.status, page.told], **page.private))
        settings.wire(page, chat_settings, switched)
        live.wire(page, live_timer, synced, side.search)  # what other tabs, a phone, the terminal change
    # Gradio keeps a copy of the page's state for every session (each page load, tab or script
    # client) until it holds 10,000 of them, tens of KB each: a long-running app's memory crept
    # with every reload (the soak: about 0.02 MB per message). The oldest are dropped past
    # MAX_TABS, as the page's own per-tab records are.
    demo.state_session_capacity = MAX_TABS
    return demo


def launch_options() -> dict:
    """Options that Gradio 6 takes at launch() rather than in Blocks()."""
    return dict(i18n=gr.I18n(**i18n.TRANSLATIONS), css=CSS + habits.CSS, js=habits.JS,
                theme=gr.themes.Soft())
