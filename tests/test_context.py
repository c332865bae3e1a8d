"""context.py as a specification: what the model reads for one reply, with the tiny tokenizer.

No model, no database, no config file: the functions are pure, so each rule is shown with a
Config value, a few stored messages and the tiny Qwen tokenizer's counts (tests/models.py).
"""

from __future__ import annotations

import json

import pytest

from qwen_chat import context
from qwen_chat.config import Config
from qwen_chat.engine.prompt import prompt_ids
from qwen_chat.errors import ConfigError, MessageTooLong
from qwen_chat.store import Message

CONFIG = Config(system_prompt="Be brief.", max_input_tokens=256, max_new_tokens=64)


@pytest.fixture(scope="module")
def count(tiny_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    return lambda messages: len(prompt_ids(tokenizer, messages))


def message(role, content, status="complete", **fields) -> Message:
    return Message(0, "c", role, content, 0.0, status=status, **fields)


def turns(n: int, words: str = "alpha beta gamma delta") -> list[Message]:
    """n questions, each answered."""
    out = []
    for i in range(n):
        out += [message("user", f"question {i}: {words}"),
                message("assistant", f"answer {i}: {words}")]
    return out


# The budget ------------------------------------------------------------------------------------
def test_the_budget_is_max_input_tokens_within_the_models_context_minus_the_reply():
    assert context.input_budget(CONFIG, None) == 256  # the model loads: its context is unknown
    assert context.input_budget(CONFIG, 32768) == 256
    assert context.input_budget(CONFIG, 300) == 300 - 64
    assert context.input_budget(CONFIG, 100) == context.MIN_BUDGET  # never below a usable floor


# The system message ----------------------------------------------------------------------------
def test_the_system_message_comes_first_and_a_blank_one_is_left_out():
    assert context.system_messages(CONFIG) == [{"role": "system", "content": "Be brief."}]
    assert context.system_messages(Config(system_prompt=" \n")) == []
    prompt = context.prompt_messages(CONFIG, [message("user", "hi")])
    assert prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


# What the model sees of a conversation ---------------------------------------------------------
def test_the_model_sees_what_the_user_saw_minus_failures_with_the_replies_own_token_ids():
    stored = [message("user", "one"), message("assistant", "reply one", tokens=json.dumps([5, 6])),
              message("user", "two"), message("assistant", "", "error", error="boom"),
              message("user", "three"), message("assistant", "cut short", "stopped"),
              message("user", "four"), message("assistant", "half", "interrupted"),
              message("user", "five"), message("assistant", "", "stopped"),  # nothing to read
              message("user", "six")]
    assert context.prompt_messages(CONFIG, stored) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "reply one", "token_ids": [5, 6]},
        {"role": "user", "content": "two"},
        {"role": "user", "content": "three"}, {"role": "assistant", "content": "cut short"},
        {"role": "user", "content": "four"}, {"role": "assistant", "content": "half"},
        {"role": "user", "content": "five"}, {"role": "user", "content": "six"}]


def test_with_history_off_the_model_sees_the_last_question_alone():
    stored = [*turns(3), message("user", "last")]
    assert context.prompt_messages(Config(system_prompt="", enable_history=False), stored) == [
        {"role": "user", "content": "last"}]


# The length check of a new message -------------------------------------------------------------
def test_a_message_that_fits_with_the_system_message_passes(count):
    context.check_length("short question", CONFIG, budget=256, count=count)


def test_a_message_too_long_in_tokens_is_refused_counting_the_system_message(count):
    text, system = "word " * 200, "Answer every question in one plain sentence. " * 4
    config = Config(system_prompt=system)
    alone = count([{"role": "user", "content": text}])
    with_system = count([*context.system_messages(config), {"role": "user", "content": text}])
    budget = (alone + with_system) // 2  # fits alone, not with the system message
    assert alone <= budget < with_system
    with pytest.raises(MessageTooLong, match=f"{with_system:,} tokens with the system prompt"):
        context.check_length(text, config, budget=budget, count=count)
    context.check_length(text, Config(system_prompt=""), budget=budget, count=count)


def test_a_huge_message_is_refused_by_its_length_without_being_tokenized():
    def never(messages):
        raise AssertionError("tokenized")

    text = "x" * (context.CHARS_PER_TOKEN_LIMIT * 256 + 1)
    with pytest.raises(MessageTooLong, match=f"{len(text):,} characters"):
        context.check_length(text, CONFIG, budget=256, count=never)
    context.check_length("x" * 1000, CONFIG, budget=256, count=None)  # loading: characters only


# Fitting the history ---------------------------------------------------------------------------
def test_a_prompt_that_fits_is_kept_whole_with_its_token_count(count):
    messages = context.prompt_messages(CONFIG, [*turns(2), message("user", "next")])
    fitted = context.fit(messages, budget=256, count=count)
    assert (fitted.messages, fitted.dropped, fitted.tokens) == (messages, 0, count(messages))
    assert not fitted.newly_cut


def test_a_long_history_is_cut_at_a_user_message_to_three_quarters_of_the_budget(count):
    messages = context.prompt_messages(CONFIG, [*turns(12), message("user", "latest")])
    assert count(messages) > 256
    fitted = context.fit(messages, budget=256, count=count)
    assert fitted.messages[0] == {"role": "system", "content": "Be brief."}  # always kept
    assert fitted.messages[1]["role"] == "user" and fitted.messages[-1]["content"] == "latest"
    assert fitted.dropped % 2 == 0 and fitted.messages[1:] == messages[1 + fitted.dropped:]
    assert fitted.tokens == count(fitted.messages) <= context.REFILL * 256
    # One message more would have been left in: the cut is as small as the rule allows.
    assert count([messages[0], *messages[fitted.dropped - 1:]]) > context.REFILL * 256
    assert fitted.newly_cut  # the first cut: the user is told


def test_the_previous_cut_is_kept_while_it_fits_so_the_prompts_start_stays_cached(count):
    stored = turns(12)
    first = context.build(CONFIG, [*stored, message("user", "q")], budget=256, count=count)
    assert first.dropped and first.newly_cut
    # The next turn: the reply to "q" stored with its cut; one more question.
    stored += [message("user", "q"), message("assistant", "a", dropped=first.dropped),
               message("user", "r")]
    second = context.build(CONFIG, stored, budget=256, count=count)
    assert (second.dropped, second.previous) == (first.dropped, first.dropped)
    assert second.messages[1:3] == first.messages[1:3] and not second.newly_cut


def test_a_last_message_longer_than_the_budget_alone_is_refused(count):
    messages = context.prompt_messages(CONFIG, [*turns(2), message("user", "word " * 300)])
    with pytest.raises(MessageTooLong, match="last message alone is longer than the 256"):
        context.fit(messages, budget=256, count=count)


# A conversation's own settings -----------------------------------------------------------------
def test_a_chats_own_settings_apply_over_config_and_are_checked_like_config_yaml():
    assert context.chat_config(CONFIG, None) is CONFIG
    own = context.chat_config(CONFIG, {"system_prompt": "Answer in French.", "temperature": 0})
    assert (own.system_prompt, own.temperature, own.max_input_tokens) == ("Answer in French.",
                                                                         0.0, 256)
    assert context.system_messages(own) == [{"role": "system", "content": "Answer in French."}]
    with pytest.raises(ConfigError, match="temperature = 5 is not allowed"):
        context.chat_config(CONFIG, {"temperature": 5})
    with pytest.raises(ConfigError, match="'port' cannot be set here"):
        context.chat_config(CONFIG, {"port": 9000})
