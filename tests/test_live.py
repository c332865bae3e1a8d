"""The page's live refresh (ui/live.py) against the tab's own events, driven through the page's
own handlers (the Blocks' functions as Gradio calls them, with a tab's request), without a
browser: a look at the history that set out before the tab switched chats must not put the
previous chat back (it did: in Chromium the switch was undone about one time in thirty), and one
that the browser shows after the switch anyway is undone by the next look."""

from __future__ import annotations

import gradio as gr
import pytest
from gradio.context import LocalContext

from qwen_chat.chat import ChatService
from qwen_chat.config import ConfigWatcher, load_config
from qwen_chat.engine.local import Engine
from qwen_chat.store import Store
from qwen_chat.ui import build_ui


@pytest.fixture
def page(tmp_path, tiny_model):
    config_path = tmp_path / "config.yaml"
    config_path.write_text("max_new_tokens: 3\n", encoding="utf-8")
    store = Store(tmp_path / "chat.db")
    service = ChatService(store, Engine(*tiny_model),
                          ConfigWatcher(config_path, load_config(config_path)))
    demo = build_ui(service, secret="s" * 64)
    handlers = {fn.name: fn.fn for fn in demo.fns.values() if fn.fn is not None}
    yield service, {**handlers, "demo": demo}
    store.close()


def as_tab(session: str) -> gr.Request:
    request = gr.Request(session_hash=session)
    LocalContext.request.set(request)  # as Gradio sets it for the event it runs
    return request


def two_chats(service, owner: str):
    """Conversations "one" and "two", each with a message."""
    chats = [service.store.create_conversation(owner, title) for title in ("one", "two")]
    for conversation in chats:
        service.store.add_message(conversation.id, "user", f"hello {conversation.title}")
    return chats


def test_a_look_that_set_out_before_a_switch_leaves_the_switched_tab_alone(page, monkeypatch):
    service, handlers = page
    owner = "a" * 32
    first, second = two_chats(service, owner)
    tick, open_conversation = handlers["tick"], handlers["open_conversation"]
    monkeypatch.setattr("qwen_chat.ui.common.SETTLE_S", 1.0)

    # The tab shows "one", and has seen no change yet: a look now refreshes it.
    request = as_tab("tab-1")
    list_, current, chat, _, seen, synced = tick(owner, first.id, 0, {}, "", request)
    assert current == first.id and [m["content"] for m in chat] == ["hello one"]

    # The user opens "two" (its handler runs) while a look made with "one" is on its way.
    picked = open_conversation(owner, "", gr.EventData(None, {"id": second.id}), as_tab("tab-1"))
    assert picked[0] == second.id
    stale = tick(owner, first.id, 0, {}, "", as_tab("tab-1"))
    assert all(isinstance(out, type(gr.skip())) for out in stale[:5]), stale

    # Another tab is not held back by this one's switch.
    other = tick(owner, first.id, 0, {}, "", as_tab("tab-2"))
    assert other[1] == first.id

    # Once the switch has settled, looks refresh the tab again.
    monkeypatch.setattr("qwen_chat.ui.common.SETTLE_S", 0.0)
    later = tick(owner, second.id, 0, {}, "", as_tab("tab-1"))
    assert later[1] == second.id and [m["content"] for m in later[2]] == ["hello two"]


def test_the_server_forgets_the_oldest_page_sessions_past_max_tabs(page):
    """Every page load (a reload, a tab, a script's client) is a session whose state Gradio
    keeps; without a bound the app's memory grew with every reload (the soak's creep)."""
    from fastapi import FastAPI

    from qwen_chat.ui.common import MAX_TABS

    service, handlers = page
    demo = handlers["demo"]
    gr.mount_gradio_app(FastAPI(), demo, path="/")
    for i in range(MAX_TABS + 20):
        demo.state_holder[f"tab-{i}"]
    assert len(demo.state_holder.session_data) == MAX_TABS
    assert "tab-0" not in demo.state_holder and f"tab-{MAX_TABS + 19}" in demo.state_holder


def test_a_look_answered_before_a_switch_but_shown_after_it_is_undone_by_the_next(page,
                                                                                 monkeypatch):
    """A look answered before the tab's switch can still reach the browser after the switch's
    answer (the two travel apart) and put the previous chat back there. The next look sees the
    tab showing another chat than its own events handed it, and hands that one back."""
    service, handlers = page
    owner = "b" * 32
    first, second = two_chats(service, owner)
    tick, open_conversation = handlers["tick"], handlers["open_conversation"]
    monkeypatch.setattr("qwen_chat.ui.common.SETTLE_S", 0.0)
    synced = tick(owner, first.id, 0, {}, "", as_tab("tab-1"))[5]

    open_conversation(owner, "", gr.EventData(None, {"id": second.id}), as_tab("tab-1"))
    # The browser applied an earlier look's answer last: the tab shows "one" again.
    _, current, chat, _, seen, _ = tick(owner, first.id, 1, synced, "", as_tab("tab-1"))
    assert current == second.id and [m["content"] for m in chat] == ["hello two"] and seen == 1

    # A tab that shows what it was handed is left as it is (nothing changed).
    again = tick(owner, second.id, 1, tick(owner, second.id, 1, {}, "", as_tab("tab-1"))[5], "",
                 as_tab("tab-1"))
    assert all(isinstance(out, type(gr.skip())) for out in again), again

    # A new chat is handed back the same way: as empty.
    handlers["new_chat"](owner, as_tab("tab-1"))
    _, current, chat, _, seen, _ = tick(owner, second.id, 1, synced, "", as_tab("tab-1"))
    assert current is None and chat == [] and seen == 0
