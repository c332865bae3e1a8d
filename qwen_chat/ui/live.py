"""The page kept up to date with what changes elsewhere: another tab, a paired phone, the
terminal chat. The same conversations, live, wherever they are open.

Every LIVE_INTERVAL seconds each page asks whether the history changed at all (Store.changes: a
counter and SQLite's data_version, no query of the conversations). Only then does it read its
list and its open conversation, and send what differs from what it shows: the list when it is
not the one this tab was last handed (Page.handed; not while it shows search results), the open
chat when it has more or fewer messages than the page shows, or a reply is being written into
it by another tab or device (it grows here as it is saved, about once a second). A page that is
sending a message itself is left alone: its own reply streams into it; so is a page just handed
a chat by one of its own events (a switch, a new chat): a look that set out before would put the
previous chat back (Page.opened_lately). A look answered before a switch can still reach the
browser after the switch's answer (they travel apart) and put the previous chat back there: the
next look finds the tab showing another chat than its own events last handed it (Page.handed_chat)
and hands that one back.
"""

from __future__ import annotations

import gradio as gr

from ..errors import NotFound
from ..store import STREAMING
from .common import UNKNOWN, Page, lang_of

LIVE_INTERVAL = 2.0  # seconds between two looks at the history


def render() -> tuple[gr.Timer, gr.State]:
    """The timer, and what this page last synced: {"changes", "streaming"}."""
    return gr.Timer(LIVE_INTERVAL), gr.State({})


def wire(page: Page, timer: gr.Timer, synced: gr.State, search: gr.Textbox) -> None:
    service = page.service
    outputs = [page.conversations, page.current, page.chatbot, page.history, page.seen, synced]

    def tick(owner, current, seen, last, query, request: gr.Request):
        unchanged = (gr.skip(),) * 5
        last = dict(last or {})
        session = request.session_hash
        if not owner or service.sending(session) or page.opened_lately(session):
            return (*unchanged, gr.skip())
        changes = list(service.changes())
        handed = page.handed_chat(session)
        # The tab shows another chat than its own events last handed it: a look answered before
        # a switch reached the browser after the switch's answer and put the previous chat back
        # (the two travel apart). Hand the tab its chat again.
        undone = handed is not UNKNOWN and handed != (current or None)
        if changes == last.get("changes") and not last.get("streaming") and not undone:
            return (*unchanged, gr.skip())
        if undone:
            current = handed
        lang = lang_of(request)
        chat = (gr.skip(),) * 4
        if undone and not current:  # handed a new chat
            chat = (None, *page.shows([], None, opened=False))
        streaming = False
        if current:
            try:
                stored = service.messages(owner, current)
            except NotFound:  # deleted elsewhere: a new, empty chat
                current = None
                chat = (None, *page.shows([], None, opened=False))
                page.rehand(session, None)  # the tab's chat from now on
            else:
                streaming = bool(stored) and stored[-1].status == STREAMING
                if undone or len(stored) != seen or streaming or last.get("streaming"):
                    chat = (current, *page.shows(page.chat_of(owner, current, lang, stored),
                                                          current, opened=False))
        value = None if (query or "").strip() else page.list_value(owner, current, lang)
        if page.opened_lately(session):  # the tab switched chats meanwhile: this look is stale
            return (*unchanged, gr.skip())
        shown_list = gr.skip()  # search results stay as they are
        if value is not None and not page.shows_list(session, value):
            shown_list = page.handed(value)
        return (shown_list, *chat, {"changes": changes, "streaming": streaming})

    timer.tick(tick, [page.owner, page.current, page.seen, synced, search], outputs,
               queue=False, show_progress="hidden", **page.private)
