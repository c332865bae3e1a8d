"""The chat service with the tiny model, a real SQLite file and a real config.yaml on disk."""

from __future__ import annotations

import json
import os
import sqlite3
import time

import pytest

from qwen_chat import chat as chat_module
from qwen_chat import replying
from qwen_chat import context
from qwen_chat.chat import ChatService, title_from
from qwen_chat.config import ConfigWatcher, load_config
from qwen_chat.engine.local import Engine
from qwen_chat.errors import MessageTooLong
from qwen_chat.store import Store

OWNER = "o" * 32
# Greedy with no penalty: the random tiny model repeats one token and never ends its turn,
# so a reply runs until max_new_tokens or until it is stopped.
CONFIG = "temperature: 0\nrepetition_penalty: 1.0\nmax_new_tokens: {n}\nsystem_prompt: Be brief.\n"


def write_config(path, text):
    path.write_text(text, encoding="utf-8")
    stamp = time.time_ns() + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def setup(tmp_path, tiny_model):
    config_path = tmp_path / "config.yaml"
    write_config(config_path, CONFIG.format(n=12))
    store = Store(tmp_path / "chat.db")
    service = ChatService(store, Engine(*tiny_model),
                          ConfigWatcher(config_path, load_config(config_path)))
    yield service, config_path
    store.close()


def rows(service, conversation_id):
    """What is on disk, read through a second connection as another process would."""
    with sqlite3.connect(service.store.path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(
            "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", [conversation_id])]


def test_a_message_and_its_reply_are_stored_with_figures(setup):
    service, _ = setup
    updates = list(service.send(OWNER, None, "Hello, how are you?"))
    final = updates[-1]
    assert final.status == "complete" and final.text
    [conv] = service.conversations(OWNER)
    assert conv.title == "Hello, how are you?" and conv.id == final.conversation.id
    user, reply = rows(service, conv.id)
    assert (user["role"], user["content"], user["status"]) == ("user", "Hello, how are you?",
                                                               "complete")
    assert (reply["content"], reply["status"], reply["new_tokens"]) == (final.text, "complete", 12)
    assert reply["prompt_tokens"] > 0 and reply["ttft"] > 0 and reply["tokens_per_s"] > 0


def test_the_user_message_is_committed_before_generation_starts(setup):
    service, _ = setup
    updates = service.send(OWNER, None, "first")
    update = next(updates)
    on_disk = rows(service, update.conversation.id)
    assert [(r["role"], r["content"], r["status"]) for r in on_disk][0] == ("user", "first",
                                                                            "complete")
    assert on_disk[1]["status"] == "streaming"
    updates.close()


def test_the_reply_is_committed_while_it_streams(setup, monkeypatch):
    service, config_path = setup
    write_config(config_path, CONFIG.format(n=400))
    monkeypatch.setattr(replying, "SAVE_INTERVAL", 0.0)
    updates = service.send(OWNER, None, "stream please")
    seen_on_disk = []
    for update in updates:
        if update.text:
            seen_on_disk.append(rows(service, update.conversation.id)[1]["content"])
        if len(seen_on_disk) >= 5:
            break
    updates.close()
    assert len(set(seen_on_disk)) > 1  # the stored reply grew while streaming
    assert all(later.startswith(earlier) for earlier, later in zip(seen_on_disk, seen_on_disk[1:]))


def test_stop_keeps_what_was_shown_and_marks_it_stopped(setup):
    service, config_path = setup
    write_config(config_path, CONFIG.format(n=5000))
    updates = service.send(OWNER, None, "long answer please")
    shown = ""
    for update in updates:
        shown = update.text
        if len(shown) > 10:
            break
    updates.close()  # what Gradio does on Stop, a closed tab or a reload
    reply = rows(service, update.conversation.id)[1]
    assert (reply["status"], reply["content"]) == ("stopped", shown)
    assert 0 < reply["new_tokens"] < 5000
    assert not service.engine.lock.locked()


def test_an_engine_error_is_reported_and_stored(setup, tiny_dir):
    import torch

    from tests.test_engine import _Exploding

    service, _ = setup
    service.engine = Engine(_Exploding.from_pretrained(tiny_dir, dtype=torch.float32),
                            service.engine.tokenizer)
    final = list(service.send(OWNER, None, "break please"))[-1]
    assert final.status == "error" and "kernel exploded" in final.error
    reply = rows(service, final.conversation.id)[1]
    assert reply["status"] == "error" and "kernel exploded" in reply["error"]


def test_blank_messages_are_ignored(setup):
    service, _ = setup
    assert list(service.send(OWNER, None, "  \n\t ")) == []
    assert service.conversations(OWNER) == []


def test_history_setting_and_system_prompt_apply_to_the_next_message(setup):
    service, config_path = setup
    final = list(service.send(OWNER, None, "first question"))[-1]
    cid = final.conversation.id
    list(service.send(OWNER, cid, "second question"))
    prompt = context.prompt_messages(service.config().config, service.messages(OWNER, cid))
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user", "assistant"]
    assert prompt[0]["content"] == "Be brief."

    write_config(config_path, CONFIG.format(n=12).replace("Be brief.", "Be kind.")
                 + "enable_history: false\n")
    service.store.add_message(cid, "user", "third question")
    prompt = context.prompt_messages(service.config().config, service.messages(OWNER, cid))
    assert prompt == [{"role": "system", "content": "Be kind."},
                      {"role": "user", "content": "third question"}]
    # Earlier turns are still stored and shown.
    assert len(service.messages(OWNER, cid)) == 5


def test_a_reply_is_stored_with_its_token_ids_and_a_restart_gives_the_same_replies(
        setup, tmp_path, tiny_model):
    service, config_path = setup
    # A penalty makes the tiny model's gibberish vary, and its text re-tokenize to other ids.
    write_config(config_path, CONFIG.format(n=12).replace("repetition_penalty: 1.0",
                                                         "repetition_penalty: 2.0"))
    first = list(service.send(OWNER, None, "Hello! 你好"))[-1]
    conv = first.conversation
    reply = rows(service, conv.id)[1]
    ids = json.loads(reply["tokens"])
    tokenizer = service.engine.tokenizer
    assert len(ids) == 12 and tokenizer.decode(ids) == reply["content"]
    assert tokenizer(reply["content"], add_special_tokens=False)["input_ids"] != ids

    # The next turn reuses the cached prompt and reply whole (its last token was never cached).
    second = list(service.send(OWNER, conv.id, "And then?"))[-1]
    assert second.stats.cached_tokens >= first.stats.prompt_tokens + len(ids) - 1
    retried = list(service.send(OWNER, conv.id, "And then?", keep=2))[-1]  # a retry
    assert retried.stats.cached_tokens == second.stats.prompt_tokens - 1

    # A restart: an empty cache, the stored ids. The reply is the one the cache gave (greedy).
    service.store.close()
    store = Store(tmp_path / "chat.db")
    restarted = ChatService(store, Engine(*tiny_model),
                            ConfigWatcher(config_path, load_config(config_path)))
    again = list(restarted.send(OWNER, conv.id, "And then?", keep=2))[-1]
    assert again.stats.cached_tokens == 0
    assert (again.text, again.stats.prompt_tokens) == (retried.text, retried.stats.prompt_tokens)
    store.close()
    service.store = Store(tmp_path / "chat.db")  # for the fixture's teardown


def test_conversations_belong_to_one_browser(setup):
    service, _ = setup
    final = list(service.send(OWNER, None, "mine"))[-1]
    assert service.conversations("x" * 32) == []
    with pytest.raises(Exception, match="not found"):
        list(service.send("x" * 32, final.conversation.id, "let me in"))
    assert [m.content for m in service.messages(OWNER, final.conversation.id)][0] == "mine"


def test_titles_are_one_line_and_short():
    assert title_from("  What is\nthe   capital? ") == "What is the capital?"
    long = title_from("word " * 30)
    assert len(long) == 40 and long.endswith("…")


def test_stop_ends_only_the_reply_of_its_own_session(setup):
    service, config_path = setup
    write_config(config_path, CONFIG.format(n=5000))
    first = service.send(OWNER, None, "tab one", session="tab-1")
    update = next(u for u in first if u.text)
    second = service.send("t" * 32, None, "tab two", session="tab-2")
    other = next(u for u in second if u.text)  # generated together with the first
    assert other.status == "streaming"

    assert service.stop("tab-2") == other.conversation.id
    assert list(second)[-1].status == "stopped"
    assert service.stop("no-such-tab") is None

    tokens = update.stats.new_tokens  # live figures of the first reply
    time.sleep(0.3)
    assert update.stats.new_tokens > tokens  # the first reply went on

    assert service.stop("tab-1") == update.conversation.id
    final = list(first)[-1]
    assert final.status == "stopped"
    assert service.wait_saved(OWNER, update.conversation.id)
    stored = rows(service, update.conversation.id)[1]
    assert (stored["status"], stored["content"]) == ("stopped", final.text)


def test_a_long_conversation_drops_its_oldest_turns_and_says_so_once(setup):
    service, config_path = setup
    write_config(config_path, CONFIG.format(n=12) + "max_input_tokens: 256\n")
    cid, notices, dropped, cached = None, [], [], []
    for turn in range(10):  # about 50 tokens a turn, with the reply
        final = list(service.send(OWNER, cid, f"turn {turn}: alpha beta gamma delta"))[-1]
        cid = final.conversation.id
        assert final.status == "complete"
        notices.append(final.notice)
        reply = rows(service, cid)[-1]
        dropped.append(reply["dropped"])
        cached.append(final.stats.cached_tokens)
        assert reply["prompt_tokens"] <= 256  # never more than the model is allowed to read
    first = next(i for i, d in enumerate(dropped) if d)
    assert first > 0 and dropped[:first] == [0] * first
    # Told once, at the first reply that left messages out; not again after that.
    assert notices[first] and "earliest messages" in notices[first]
    assert [n for i, n in enumerate(notices) if i != first] == [None] * 9
    # Cut to 3/4 of the budget at a user message: the next turn keeps the same start (and so
    # reuses its KV cache) instead of re-prefilling from a new start every turn.
    assert dropped[first] % 2 == 0 and any(d == dropped[i - 1] for i, d in enumerate(dropped) if i > first)
    assert any(c > 20 for c in cached[first + 1:])
    prompt = context.build(service.config().config, service.messages(OWNER, cid), budget=256,
                           count=service.engine.count_tokens).messages
    assert prompt[0] == {"role": "system", "content": "Be brief."} and prompt[1]["role"] == "user"
    assert prompt[-2]["content"].startswith("turn 9") and prompt[-1]["role"] == "assistant"
    assert len(service.messages(OWNER, cid)) == 20  # all of it is still stored and shown


def test_a_message_longer_than_the_limit_is_refused_and_nothing_is_stored(setup):
    service, config_path = setup
    write_config(config_path, CONFIG.format(n=12) + "max_input_tokens: 256\n")
    first = list(service.send(OWNER, None, "hello"))[-1]
    before = rows(service, first.conversation.id)
    with pytest.raises(MessageTooLong, match="too long .*at most 256"):
        list(service.send(OWNER, first.conversation.id, "word " * 400))
    started = time.monotonic()
    with pytest.raises(MessageTooLong, match="1,048,576 characters"):
        list(service.send(OWNER, None, "x" * 1024 * 1024))  # 1 MB: refused before tokenizing
    assert time.monotonic() - started < 2
    assert rows(service, first.conversation.id) == before and len(service.conversations(OWNER)) == 1


def test_any_unicode_is_stored_and_read_back_exactly(setup):
    service, _ = setup
    text = ("中文 emoji 🙂👍🏽 עברית العربية zero\u200bwidth\u200d joiner NUL\x00here "
            "<script>alert(1)</script> &amp; \r\n tab\t end")
    final = list(service.send(OWNER, None, text))[-1]
    assert rows(service, final.conversation.id)[0]["content"] == text
    assert service.messages(OWNER, final.conversation.id)[0].content == text


def test_a_message_typed_before_send_is_prefilled_and_the_reply_says_so(setup):
    """ChatService.draft (the page calls it as the user types): Send then prefills one token.
    How much of the prompt was cached is stored with the reply."""
    service, config_path = setup
    question = "What is the capital of France?"
    service.engine.warm([{"role": "system", "content": "Be brief."}])
    assert service.draft(OWNER, None, question[:10], session="tab").wait(30)
    assert service.draft(OWNER, None, question, session="tab").wait(30)
    first = list(service.send(OWNER, None, question, session="tab"))[-1]
    assert first.stats.cached_tokens == first.stats.prompt_tokens - 1
    conv = first.conversation
    assert rows(service, conv.id)[1]["cached_tokens"] == first.stats.prompt_tokens - 1

    # In an existing conversation the draft extends its cache (history and reply stay cached).
    assert service.draft(OWNER, conv.id, "And of Germany?", session="tab").wait(30)
    second = list(service.send(OWNER, conv.id, "And of Germany?", session="tab"))[-1]
    assert second.stats.cached_tokens == second.stats.prompt_tokens - 1
    assert rows(service, conv.id)[3]["cached_tokens"] == second.stats.prompt_tokens - 1

    # Sent without a draft (pasted and sent at once): the user's words are prefilled at Send.
    third = list(service.send(OWNER, conv.id, "And of Italy? " * 3, session="tab"))[-1]
    assert third.stats.cached_tokens < third.stats.prompt_tokens - 10

    # With history off the prompt is the system prompt and the message: drafted all the same.
    write_config(config_path, CONFIG.format(n=12) + "enable_history: false\n")
    assert service.draft(OWNER, conv.id, "And of Spain?", session="tab").wait(30)
    fourth = list(service.send(OWNER, conv.id, "And of Spain?", session="tab"))[-1]
    assert fourth.stats.prompt_tokens < first.stats.prompt_tokens + 5
    assert fourth.stats.cached_tokens == fourth.stats.prompt_tokens - 1

    # Nothing to prefill: blank text, another browser's or a deleted conversation.
    assert service.draft(OWNER, conv.id, "   ", session="tab") is None
    assert service.draft("x" * 32, conv.id, "Hi", session="tab") is None
    service.delete(OWNER, conv.id)
    assert service.draft(OWNER, conv.id, "Hi", session="tab") is None


# One config snapshot per message ---------------------------------------------------------------
def count_config_reads(service, monkeypatch) -> list[int]:
    """Record each reading of config.yaml the service makes (the watcher's snapshot)."""
    reads, read = [], service.settings.snapshot
    monkeypatch.setattr(service.settings, "snapshot", lambda: reads.append(1) or read())
    return reads


def test_config_is_read_once_per_message_and_a_save_mid_reply_applies_to_the_next(
        setup, monkeypatch):
    service, config_path = setup
    write_config(config_path, CONFIG.format(n=40))
    service.warm()  # on, as in the app: a reply's end re-warms a changed system prompt
    reads = count_config_reads(service, monkeypatch)
    asked = []  # what the model was given: (messages, sampling)
    generate = service.engine.generate
    monkeypatch.setattr(service.engine, "generate", lambda messages, sampling, **kw: (
        asked.append((messages, sampling)) or generate(messages, sampling, **kw)))

    updates = service.send(OWNER, None, "first question", session="tab")
    next(u for u in updates if u.text)
    write_config(config_path, CONFIG.format(n=5).replace("Be brief.", "Be kind.")
                 + "max_input_tokens: 300\n")  # saved while the reply streams
    first = list(updates)[-1]
    assert len(reads) == 1
    assert first.status == "complete" and first.stats.new_tokens == 40
    assert rows(service, first.conversation.id)[1]["new_tokens"] == 40
    assert asked[0][0][0] == {"role": "system", "content": "Be brief."}
    assert asked[0][1].max_new_tokens == 40

    cid = first.conversation.id  # the next message: the saved settings
    second = list(service.send(OWNER, cid, "second question", session="tab"))[-1]
    assert len(reads) == 2 and second.stats.new_tokens == 5
    assert asked[1][0][0] == {"role": "system", "content": "Be kind."}
    retried = list(service.send(OWNER, cid, "second question", session="tab", keep=2))[-1]
    assert len(reads) == 3 and retried.stats.new_tokens == 5

    # A caller that read the config as the message arrived (the page) hands it down: no read.
    config = service.config().config
    list(service.send(OWNER, cid, "third question", config=config))
    assert len(reads) == 4


def test_a_refused_config_save_is_told_on_every_page_once(setup):
    """Each page keeps the config version it last told its user about (ui.py: gr.State)."""
    service, config_path = setup
    pages = {"tab-1": None, "tab-2": None}  # page -> version told
    told = {page: [] for page in pages}

    def message_from(page):  # what a page does as a message arrives
        snapshot = service.config()
        told[page] += chat_module.config_warnings(snapshot, pages[page])
        pages[page] = snapshot.version

    message_from("tab-1")
    message_from("tab-2")
    assert told == {"tab-1": [], "tab-2": []}  # nothing wrong: nothing said

    write_config(config_path, "temperature: 9\n")
    for _ in range(3):
        message_from("tab-1")
    message_from("tab-2")
    message_from("tab-2")
    for page in pages:
        [(key, values)] = told[page]  # once each, the second page too
        assert key == "config_invalid" and "temperature = 9" in values["error"]

    write_config(config_path, CONFIG.format(n=12) + "port: 9999\n")  # fixed, and a restart key
    message_from("tab-2")
    message_from("tab-1")
    message_from("tab-1")
    for page in pages:
        assert told[page][1:] == [("restart_needed", {"keys": "port"})]


def test_the_pages_concurrency_follows_max_batch(tmp_path, tiny_model):
    """Every queued event of the page and the script API runs up to max_batch at once (the
    replies as one group): none is left to the queue's default."""
    from qwen_chat.api import add_api
    from qwen_chat.ui import GENERATE, build_ui

    config_path = tmp_path / "config.yaml"
    write_config(config_path, "max_batch: 3\n")
    store = Store(tmp_path / "chat.db")
    service = ChatService(store, Engine(*tiny_model, max_batch=3),
                          ConfigWatcher(config_path, load_config(config_path)))
    demo = build_ui(service, secret="s" * 64)
    with demo:
        add_api(service, concurrency_id=GENERATE)
    demo.queue(default_concurrency_limit=3)  # as app.py does: ChatInterface's own events
    queued = [fn for fn in demo.fns.values() if fn.fn is not None and fn.queue]
    assert {3 if fn.concurrency_limit == "default" else fn.concurrency_limit
            for fn in queued} == {3}
    # The page's replies (ChatInterface's: sent, retried, edited) and the script API's.
    replies = [fn.name for fn in queued if fn.concurrency_id == GENERATE]
    assert sorted(set(replies)) == ["_submit_fn", "chat"] and len(replies) >= 4
    store.close()


def test_an_edited_message_replaces_the_turns_after_it_and_reuses_the_cache(setup):
    """Editing the first of two questions (keep=0 messages before it): the later turns go, in
    the same transaction as the new message is stored; the reply's prompt reuses the cached
    system prompt; a refused edit (too long) deletes nothing."""
    service, _ = setup
    first = list(service.send(OWNER, None, "first question"))[-1]
    cid = first.conversation.id
    list(service.send(OWNER, cid, "second question"))
    assert len(rows(service, cid)) == 4
    with pytest.raises(MessageTooLong):
        list(service.send(OWNER, cid, "x " * 100_000, keep=0))
    assert len(rows(service, cid)) == 4
    edited = list(service.send(OWNER, cid, "first question, edited", keep=0))[-1]
    user, reply = rows(service, cid)
    assert user["content"] == "first question, edited" and reply["id"] == edited.message_id
    assert 0 < reply["cached_tokens"] < reply["prompt_tokens"]
    # A retry of the last message: the same question again, its prompt all but cached.
    again = list(service.send(OWNER, cid, "first question, edited", keep=0))[-1]
    user2, reply2 = rows(service, cid)
    assert user2["id"] > user["id"] and reply2["id"] == again.message_id
    assert reply2["cached_tokens"] >= reply2["prompt_tokens"] - 2, reply2
