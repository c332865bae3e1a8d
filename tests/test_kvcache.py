"""KV-cache reuse across turns gives exactly the replies a full re-prefill gives (greedy).

Two engines over the same weights: one reuses each conversation's cache, one never does. Every
turn of a multi-turn conversation, through every event that changes the prompt (Stop mid-reply,
Retry, an edited earlier message, two conversations alternating, history switched off and on, a
new system prompt, a deleted conversation, a restart), must give the same text from both.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qwen_chat.engine.local import Engine, Sampling
from qwen_chat.engine.kvcache import KVCacheStore, cache_bytes, common_prefix

REPO = Path(__file__).resolve().parent.parent
GREEDY = Sampling(temperature=0, max_new_tokens=24, repetition_penalty=3.0)


class Pair:
    """The engine under test (reusing caches) beside a reference that re-prefills every turn."""

    def __init__(self, model, tokenizer, sampling=GREEDY):
        self.reuse = Engine(model, tokenizer, kv_cache_mb=256)
        self.plain = Engine(model, tokenizer, kv_cache_mb=0)
        self.sampling = sampling
        self.cached: list[int] = []
        self.prompts: list[int] = []

    def reply(self, messages: list[dict], key: str) -> dict:
        """The reply as the app keeps it for the next turn: its text and its token ids."""
        generation = self.reuse.generate(messages, self.sampling, cache_key=key)
        text = "".join(generation)
        expected = "".join(self.plain.generate(messages, self.sampling))
        assert text == expected, (messages, text, expected)
        assert generation.stats.prompt_tokens == self.reuse.prompt_ids(messages).shape[1]
        self.cached.append(generation.stats.cached_tokens)
        self.prompts.append(generation.stats.prompt_tokens)
        return {"role": "assistant", "content": text, "token_ids": generation.token_ids}

    def restart(self):
        self.reuse = Engine(self.reuse.model, self.reuse.tokenizer, kv_cache_mb=256)


def chat(system: str, turns: list[tuple[str, str | dict]], question: str) -> list[dict]:
    """Messages of a conversation; a reply is its text, or a message with its token ids."""
    messages = [{"role": "system", "content": system}] if system else []
    for user, reply in turns:
        messages += [{"role": "user", "content": user},
                     reply if isinstance(reply, dict) else {"role": "assistant", "content": reply}]
    return messages + [{"role": "user", "content": question}]


def test_reuse_matches_full_prefill_through_every_event(tiny_model):
    pair = Pair(*tiny_model)
    system = "You are a helpful assistant."
    a: list[tuple[str, str]] = []
    b: list[tuple[str, str]] = []

    for q in ("Hello! 你好", "What is the capital of France?", "Tell me more, please."):
        a.append((q, pair.reply(chat(system, a, q), "A")))
    assert pair.cached[-1] > 0 and pair.cached[0] == 0  # turn 1 prefills all, later turns reuse

    # The next turn reuses the whole previous prompt and reply (all but its last token, whose
    # keys were never computed), whether or not the reply's text re-tokenizes to its ids.
    assert pair.cached[-1] >= pair.prompts[-2] + len(a[-2][1]["token_ids"]) - 1

    # Two conversations alternating: each keeps its own cache.
    b.append(("Other chat 另一个", pair.reply(chat(system, b, "Other chat 另一个"), "B")))
    a.append(("Back to A", pair.reply(chat(system, a, "Back to A"), "A")))
    assert pair.cached[-1] > 0

    # Stop mid-reply: the partial text is what the history holds next turn.
    generation = pair.reuse.generate(chat(system, a, "Stop me"), GREEDY, cache_key="A")
    pieces = iter(generation)
    partial = next(p for p in pieces if p)
    generation.close()
    a.append(("Stop me", partial))
    a.append(("After the stop", pair.reply(chat(system, a, "After the stop"), "A")))

    # Retry: the same prompt again, the reply replaced.
    retried = pair.reply(chat(system, a[:-1], "After the stop"), "A")
    a[-1] = ("After the stop", retried)

    # An earlier message edited: reuse stops where the prompts part.
    a[1] = ("What is the capital of Italy?", a[1][1])
    a[2] = (a[2][0], {**a[2][1], "content": a[2][1]["content"] + " (edited)"})  # ids stale now
    a.append(("Edited", pair.reply(chat(system, a, "Edited"), "A")))

    # History switched off (only the last message), then on again.
    pair.reply(chat(system, [], "Alone"), "A")
    a.append(("History back", pair.reply(chat(system, a, "History back"), "A")))

    # A new system prompt: only the few tokens before it differs are reusable.
    before = pair.cached[-2]
    pair.reply(chat("Answer in one word.", a, "New rules"), "A")
    assert pair.cached[-1] < 10 < before

    # Deleted conversation, then a restart: both start from an empty cache.
    pair.reuse.forget("B")
    b.append(("After delete", pair.reply(chat(system, b, "After delete"), "B")))
    assert pair.cached[-1] == 0
    pair.restart()
    a.append(("After restart", pair.reply(chat(system, a, "After restart"), "A")))
    assert pair.cached[-1] == 0
    a.append(("Warm again", pair.reply(chat(system, a, "Warm again"), "A")))
    assert pair.cached[-1] > 0


@pytest.mark.slow
def test_reuse_matches_full_prefill_on_a_real_model(smollm):
    pair = Pair(*smollm, sampling=Sampling(temperature=0, max_new_tokens=20,
                                           repetition_penalty=1.0))
    turns: list[tuple[str, str]] = []
    for q in ("What is the capital of France?", "And of Germany?", "用一句话介绍一下北京。"):
        turns.append((q, pair.reply(chat("", turns, q), "conv")))
    assert "Paris" in turns[0][1]["content"]
    # Each turn reuses the whole previous prompt and reply, and prefills only the new user turn
    # (plus the template).
    for k in (1, 2):
        assert pair.cached[k] >= pair.prompts[k - 1]
        question_tokens = len(pair.reuse.tokenizer(turns[k][0])["input_ids"])
        assert pair.prompts[k] - pair.cached[k] <= question_tokens + 12


def test_a_reply_keeps_the_ids_it_was_generated_as(tiny_model):
    """Re-tokenizing a reply's text can give other ids than the model generated (a "\n\n"
    generated as two tokens, one token when re-tokenized); the prompt then keeps the model's."""
    engine = Engine(*tiny_model)
    tok = engine.tokenizer
    text = "Hello! 你好\n\nParis."
    canonical = tok(text, add_special_tokens=False)["input_ids"]
    one_by_one = [i for ch in text for i in tok(ch, add_special_tokens=False)["input_ids"]]
    assert one_by_one != canonical and tok.decode(one_by_one) == text
    reply = {"role": "assistant", "content": text, "token_ids": one_by_one}
    messages = chat("Be brief.", [("Hi", reply)], "And then?")
    ids = engine.prompt_ids(messages)[0].tolist()
    as_text = engine.prompt_ids(chat("Be brief.", [("Hi", text)], "And then?"))[0].tolist()
    start = next(i for i in range(len(ids)) if ids[i:i + len(one_by_one)] == one_by_one)
    assert ids[:start] == as_text[:start]  # the same template and user turn around it
    assert ids[start + len(one_by_one):] == as_text[start + len(canonical):]
    assert tok.decode(ids) == tok.decode(as_text)

    # A special token the model generated mid-reply is not in the text the user saw (the
    # stream skips it), but it is in the cache: the prompt keeps it.
    special = one_by_one[:3] + [tok.convert_tokens_to_ids("<|im_start|>")] + one_by_one[3:]
    assert tok.decode(special, skip_special_tokens=True) == text != tok.decode(special)
    kept = engine.prompt_ids(chat("Be brief.", [("Hi", {**reply, "token_ids": special})],
                                  "And then?"))[0].tolist()
    assert kept[start:start + len(special)] == special

    # Ids that no longer spell the text (an edited reply) are ignored: the text is tokenized.
    stale = {**reply, "content": text + " (edited)"}
    edited = chat("Be brief.", [("Hi", stale)], "And then?")
    assert engine.prompt_ids(edited)[0].tolist() == engine.prompt_ids(
        chat("Be brief.", [("Hi", text + " (edited)")], "And then?"))[0].tolist()


def test_the_store_evicts_the_least_recently_used_beyond_its_budget(tiny_model):
    engine = Engine(*tiny_model, kv_cache_mb=256)
    "".join(engine.generate(chat("", [], "x"), GREEDY, cache_key="probe"))
    size = engine.kv.nbytes
    assert size > 0
    store = KVCacheStore(budget_mb=1)
    store.budget = int(size * 2.5)  # room for two such caches
    for key in ("a", "b", "c"):
        generation = engine.generate(chat("", [], key), GREEDY, cache_key=key)
        "".join(generation)
        cache, _ = engine.kv.take(key, torch.tensor([-1, -1]))  # hand it over
        assert cache is None  # no common prefix: take() gives nothing and drops it
    for key in ("a", "b", "c"):
        "".join(engine.generate(chat("", [], key), GREEDY, cache_key=key))
        entry = engine.kv._entries[key]
        store.put(key, entry.tokens, entry.cache)
    assert "a" not in store and "b" in store and "c" in store
    assert store.nbytes <= store.budget
    assert cache_bytes(engine.kv._entries["c"].cache) == engine.kv._entries["c"].nbytes


def test_common_prefix_compares_token_ids():
    assert common_prefix(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4, 5])) == 2
    assert common_prefix(torch.tensor([1, 2]), torch.tensor([1, 2, 3])) == 2
    assert common_prefix(torch.tensor([9]), torch.tensor([1])) == 0
    assert common_prefix(torch.tensor([], dtype=torch.long), torch.tensor([1])) == 0


def test_a_warmed_system_prompt_starts_every_new_chat_and_changes_nothing(tiny_model):
    pair = Pair(*tiny_model)
    system = "You are a helpful assistant. 你是一个乐于助人的助手。"
    warmed = pair.reuse.warm([{"role": "system", "content": system}])
    assert warmed > 10

    first = pair.reply(chat(system, [], "Hello! 你好"), "A")
    # The new chat reused the shared prefix: everything before the user's own words.
    assert 0 < pair.cached[-1] < warmed and pair.cached[-1] >= warmed - 8
    pair.reply(chat(system, [], "A different first message"), "B")  # the shared copy is intact
    assert pair.cached[-1] == pair.cached[0]
    pair.reply(chat(system, [("Hello! 你好", first)], "And then?"), "A")  # its own cache now
    assert pair.cached[-1] > warmed
    # When a reply ends, the template's start of the next user turn is prefilled at once: a
    # later turn then prefills as few tokens as a new chat's first turn with the same words.
    pair.reply(chat(system, [], "And then?"), "E")
    assert pair.prompts[-2] - pair.cached[-2] == pair.prompts[-1] - pair.cached[-1] > 0

    # A new system prompt (hot reload) shares only the template's first tokens: still exact.
    pair.reply(chat("Answer in French.", [], "Hello!"), "C")
    assert pair.cached[-1] < warmed - 8
    pair.reply(chat("", [], "No system prompt at all"), "D")


def test_a_message_prefilled_while_typed_leaves_one_token_and_changes_nothing(tiny_model):
    """Engine.prepare: what the user types is prefilled before Send; the reply is the same."""
    pair = Pair(*tiny_model)
    system = "Be brief."
    pair.reuse.warm([{"role": "system", "content": system}])
    a = [("Hello! 你好", pair.reply(chat(system, [], "Hello! 你好"), "A"))]
    kept = pair.cached[-1] + pair.prompts[-1]

    # Typed as the app sends it: growing drafts, the last one exactly what is sent.
    question = "What is the capital of France? 法国的首都是哪里？"
    for end in (4, 17, len(question)):
        assert pair.reuse.prepare(chat(system, a, question[:end]), "A").wait(30)
    a.append((question, pair.reply(chat(system, a, question), "A")))
    assert pair.cached[-1] == pair.prompts[-1] - 1  # only the assistant header's last token
    assert pair.cached[-1] > kept

    # A draft that differs at its end from what is sent: only the common prefix is reused.
    typed, sent = chat(system, a, "Tell me more about Paris"), chat(system, a, "Tell me more about Lyon")
    assert pair.reuse.prepare(typed, "A").wait(30)
    a.append(("Tell me more about Lyon", pair.reply(sent, "A")))
    shared = common_prefix(pair.reuse.prompt_ids(typed)[0], pair.reuse.prompt_ids(sent)[0])
    assert pair.cached[-1] == shared > pair.cached[-2]

    # A new chat has no conversation yet: its draft is kept under the tab's key, then adopted.
    assert pair.reuse.prepare(chat(system, [], question), "draft:tab").wait(30)
    pair.reuse.adopt("draft:tab", "B")
    pair.reply(chat(system, [], question), "B")
    assert pair.cached[-1] == pair.prompts[-1] - 1
    assert "draft:tab" not in pair.reuse.kv


def test_a_late_keystroke_of_a_message_being_answered_changes_nothing(tiny_model):
    """A draft that arrives while its conversation's reply is queued or running (the last
    keystroke of the message being answered, or another tab) lacks that reply: it is dropped,
    so the conversation's cache still holds the reply for the next turn."""
    pair = Pair(*tiny_model)
    a = [("Hello! 你好", pair.reply(chat("", [], "Hello! 你好"), "A"))]
    with pair.reuse.lock:  # the reply cannot start until the lock is released
        generation = pair.reuse.generate(chat("", a, "And then?"), GREEDY, cache_key="A")
        late = pair.reuse.prepare(chat("", a, "And then?"), "A")
        assert late.is_set() and not pair.reuse._drafts  # dropped at once
        elsewhere = pair.reuse.prepare(chat("", [], "Meanwhile, in a new chat"), "draft:tab")
        assert not elsewhere.is_set()  # other keys' drafts wait for the engine to be idle
    a.append(("And then?", {"role": "assistant", "content": "".join(generation),
                            "token_ids": generation.token_ids}))
    assert elsewhere.wait(30)
    a.append(("Next", pair.reply(chat("", a, "Next"), "A")))
    assert pair.cached[-1] >= generation.stats.prompt_tokens + len(generation.token_ids) - 1


def test_a_draft_gives_way_to_a_reply_between_chunks(tiny_model, monkeypatch):
    """A long draft is prefilled DRAFT_CHUNK tokens at a time; a reply that arrives meanwhile
    (another conversation) starts after the current chunk, and the draft keeps what it did."""
    import qwen_chat.engine.drafts as drafts_module
    monkeypatch.setattr(drafts_module, "DRAFT_CHUNK", 8)
    pair = Pair(*tiny_model)
    long_draft = chat("", [], "word " * 60)
    with pair.reuse.lock:  # hold the model: the draft's first chunk waits for it
        done = pair.reuse.prepare(long_draft, "A")
        deadline = time.monotonic() + 10
        while pair.reuse._drafts and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the scheduler is now blocked on the lock, in the first chunk
        generation = pair.reuse.generate(chat("", [], "Quick question"), GREEDY, cache_key="B")
    text = "".join(generation)
    assert done.wait(10)
    assert text == "".join(pair.plain.generate(chat("", [], "Quick question"), GREEDY))
    # The draft stopped after one chunk; it is resumed by the next keystroke or at Send.
    resumed = pair.reuse.generate(long_draft, GREEDY, cache_key="A")
    "".join(resumed)
    assert resumed.stats.cached_tokens == 8


def test_exiting_while_a_draft_is_prefilled_exits_cleanly(tmp_path):
    """Ctrl+C while the engine prefills a draft: stop_all (atexit) stops the draft and waits
    until the scheduler rests, so the process exits normally instead of aborting ("terminate
    called", SIGABRT: it did 3 times in 3 without stop_all's wait, once in 12 when it only
    waited for the model lock, since any torch op in that thread at exit aborts)."""
    script = tmp_path / "exit_during_draft.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.models import cache_root, tiny_qwen_dir\n"
        "from qwen_chat.engine import sources as loader\n"
        "from qwen_chat.engine.local import Engine\n"
        "model, tok = loader.load(str(tiny_qwen_dir()), cache_dir=cache_root() / 'converted')\n"
        "engine = Engine(model, tok)\n"
        "engine.prepare([{'role': 'user', 'content': 'word ' * 1500}], 'k')\n"
        "while engine._drafts:\n"
        "    time.sleep(0.001)\n"
        "time.sleep(0.05)  # mid-draft: ~95 passes of 32 tokens\n"
        "print('exiting', flush=True)\n", encoding="utf-8")
    for _ in range(3):
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0 and "exiting" in done.stdout, done.stderr[-2000:]
        assert "terminate called" not in done.stderr
