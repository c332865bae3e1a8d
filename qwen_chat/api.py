"""Named Gradio API endpoints for scripts (gradio_client), beside the page, over the same service.

A script has no browser storage, so it passes its owner id itself: any string of at least 16
characters that it keeps secret (e.g. `secrets.token_hex(16)`); it sees only its own conversations.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import gradio as gr

from .chat import ChatService
from .errors import MessageTooLong, NotFound, StorageFull

MIN_OWNER_LENGTH = 16
PARAMS = {"chat": 3, "conversations": 1}  # every parameter is a string (checked by web.py)


def _check_owner(owner: str) -> str:
    if not isinstance(owner, str) or len(owner.strip()) < MIN_OWNER_LENGTH:
        raise gr.Error(f"owner must be a secret string of at least {MIN_OWNER_LENGTH} characters.",
                       print_exception=False)
    return owner.strip()


def _unknown_conversation_as_error(updates):
    try:
        yield from updates
    except (NotFound, MessageTooLong, StorageFull) as exc:  # an unknown id, too long, disk full
        # The client is told; the terminal gets no traceback for a user's situation.
        raise gr.Error(str(exc), print_exception=False) from None


def add_api(service: ChatService, *, concurrency_id: str) -> None:
    """Register /chat (streaming) and /conversations; call inside a gr.Blocks context."""

    def chat(owner: str, conversation_id: str, message: str) -> Iterator[dict]:
        """Send `message` (to a new conversation when conversation_id is empty); streams
        {"conversation_id", "text", "status", ...} until the reply ends."""
        owner = _check_owner(owner)
        if not message or not message.strip():
            raise gr.Error("message is empty.", print_exception=False)
        updates = service.send(owner, conversation_id or None, message)
        with contextlib.closing(updates):
            for update in _unknown_conversation_as_error(updates):
                yield {"conversation_id": update.conversation.id, "text": update.text,
                       "status": update.status, "error": update.error,
                       "ttft": update.stats.ttft, "tokens_per_s": update.stats.tokens_per_s,
                       "new_tokens": update.stats.new_tokens}

    def conversations(owner: str) -> list[dict]:
        """This owner's conversations, newest first, each with its messages."""
        owner = _check_owner(owner)
        return [{"id": c.id, "title": c.title, "updated_at": c.updated_at,
                 "messages": [{"role": m.role, "content": m.content, "status": m.status}
                              for m in service.messages(owner, c.id)]}
                for c in service.conversations(owner)]

    gr.api(chat, api_name="chat", concurrency_limit=service.engine.max_batch,
           concurrency_id=concurrency_id)
    gr.api(conversations, api_name="conversations", concurrency_limit=service.engine.max_batch)
