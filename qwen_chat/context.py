"""What the model reads for one reply, decided in one place: pure functions, no I/O.

Given the message's config (one frozen snapshot, see ChatService.config), the conversation's
stored messages and a token counter, these functions decide how many prompt tokens are allowed,
whether a new message can fit at all, the system message, the messages the model sees and which
of the oldest are left out. The chat service reads the config and the store and hands the
result to the engine; nothing here touches either, so the rules are tested with a tiny
tokenizer alone (tests/test_context.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .config import Config, override
from .errors import MessageTooLong
from .store import COMPLETE, INTERRUPTED, STOPPED, Message

# A message longer than this many characters per allowed token is refused without tokenizing
# it (a pasted megabyte would otherwise cost seconds of tokenizing before the refusal).
CHARS_PER_TOKEN_LIMIT = 16
# Once history must be cut, cut it to this share of the budget: the prompt's start then stays
# the same for several turns, so the KV cache keeps being reused.
REFILL = 0.75
# The smallest budget, however large max_new_tokens is against the model's context.
MIN_BUDGET = 64
# Replies that the model sees again as history: what the user saw, minus failures.
HISTORY_STATUSES = frozenset({COMPLETE, STOPPED, INTERRUPTED})

# Prompt tokens of chat messages once templated (the engine's count_tokens).
Count = Callable[[list[dict]], int]


def chat_config(config: Config, chat_settings: Mapping[str, Any] | None = None) -> Config:
    """A conversation's own settings (its system prompt, temperature, ...) over config.yaml's,
    checked as config.yaml is. No conversation has settings of its own yet: None."""
    return override(config, chat_settings, source="chat settings") if chat_settings else config


def input_budget(config: Config, context_length: int | None) -> int:
    """Prompt tokens allowed: max_input_tokens, within the model's context minus the reply.
    `context_length` is None while the model loads (its context is not known yet)."""
    if context_length is None:
        return config.max_input_tokens
    return max(MIN_BUDGET, min(config.max_input_tokens, context_length - config.max_new_tokens))


def system_messages(config: Config) -> list[dict]:
    """The system message every prompt starts with; none when system_prompt is blank."""
    if not config.system_prompt.strip():
        return []
    return [{"role": "system", "content": config.system_prompt}]


def check_length(text: str, config: Config, *, budget: int, count: Count | None) -> None:
    """Refuse (MessageTooLong) a new message that cannot fit in a prompt of `budget` tokens
    with the system message. Without `count` (the model loads) only the characters are
    checked; the tokens are then checked when the prompt is fitted."""
    if len(text) > CHARS_PER_TOKEN_LIMIT * budget:
        raise MessageTooLong(
            f"This message is too long ({len(text):,} characters): the model reads at most "
            f"{budget:,} tokens. Shorten it or split it (max_input_tokens in config.yaml).")
    if count is None:
        return
    needed = count([*system_messages(config), {"role": "user", "content": text}])
    if needed > budget:
        raise MessageTooLong(
            f"This message is too long ({needed:,} tokens with the system prompt): the model "
            f"reads at most {budget:,}. Shorten it or split it (max_input_tokens in config.yaml).")


def prompt_messages(config: Config, stored: Sequence[Message]) -> list[dict]:
    """What the model sees of a conversation, before fitting: the system message, then the
    history (only the last user message with enable_history off). A reply keeps the token ids
    it was generated as, so the engine reuses them instead of re-tokenizing its text."""
    shown = [m for m in stored if m.role == "user" or (m.status in HISTORY_STATUSES and m.content)]
    if not config.enable_history:
        shown = [m for m in shown if m.role == "user"][-1:]
    messages = []
    for m in shown:
        message = {"role": m.role, "content": m.content}
        if m.role == "assistant" and m.token_ids:
            message["token_ids"] = m.token_ids  # the model's own ids for its own words
        messages.append(message)
    return [*system_messages(config), *messages]


def previously_dropped(stored: Sequence[Message]) -> int:
    """How many of the oldest messages the conversation's last reply left out."""
    earlier = [m.dropped for m in stored if m.role == "assistant" and m.dropped is not None]
    return earlier[-1] if earlier else 0


@dataclass(frozen=True)
class Fitted:
    """A prompt cut to fit: the messages the model reads, and what was left out."""
    messages: list[dict]
    tokens: int  # prompt tokens of `messages`
    dropped: int  # oldest messages (after the system message) left out
    previous: int = 0  # how many the previous reply left out
    cited: tuple = ()  # excerpts of attached documents the reply should cite (attachments.py)

    @property
    def newly_cut(self) -> bool:
        """True at the first reply that leaves messages out: the user is told once."""
        return bool(self.dropped) and not self.previous


def fit(messages: list[dict], *, budget: int, count: Count, already_dropped: int = 0) -> Fitted:
    """Leave out the oldest history so that the prompt fits `budget`; the system message and
    the last message always stay.

    `already_dropped` (the previous reply's count) is kept while the prompt still fits, so the
    prompt's start is stable and the KV cache stays useful; when more must go, history is cut
    to REFILL of the budget, at a user message. MessageTooLong when even the last message alone
    does not fit."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    history = messages[len(system):]
    sizes: dict[int, int] = {}  # prompt tokens when the k oldest messages are left out

    def size(k: int) -> int:
        if k not in sizes:
            sizes[k] = count([*system, *history[k:]])
        return sizes[k]

    dropped = max(0, min(already_dropped, len(history) - 1))
    if size(dropped) > budget:
        while dropped < len(history) - 1 and size(dropped) > REFILL * budget:
            dropped += 1
            while dropped < len(history) - 1 and history[dropped]["role"] != "user":
                dropped += 1
        if size(dropped) > budget:
            raise MessageTooLong(f"The last message alone is longer than the {budget:,} tokens "
                                 "the model reads (max_input_tokens in config.yaml).")
    return Fitted([*system, *history[dropped:]], size(dropped), dropped, already_dropped)


def build(config: Config, stored: Sequence[Message], *, budget: int, count: Count) -> Fitted:
    """The prompt that answers the last of `stored` (a conversation's messages), fitted."""
    return fit(prompt_messages(config, stored), budget=budget, count=count,
               already_dropped=previously_dropped(stored))
