"""Gradio's ChatInterface as the page needs it (gradio 6.31): user bubbles shown as stored ones
are, the files sent with a message named above it, and the text that retry and edit take back
from the chat marked as already shown (see the README's "Where Gradio's ChatInterface falls
short")."""

from __future__ import annotations

import inspect
from pathlib import Path

import gradio as gr
from gradio.context import get_blocks_context

from ..display import typed
from .common import FILES_MARK, FILES_SEPARATOR, with_files


class Attached(str):
    """A message as sent: its text (what the chat service gets), and the names of the files it
    goes with, shown above it in the chat (common.with_files)."""
    names: tuple[str, ...] = ()

    @classmethod
    def of(cls, text: str, names=()) -> "Attached":
        message = cls(text)
        message.names = tuple(names)
        return message


class Displayed(Attached):
    """A user message taken back from the chat (retry, edit): as the chat shows it, the line
    naming its files apart (they stay with it: ChatService.send carries them over)."""

    @classmethod
    def taken(cls, shown_text: str) -> "Displayed":
        names = ()
        if shown_text.startswith(FILES_MARK) and "\n\n" in shown_text:
            head, shown_text = shown_text.split("\n\n", 1)
            names = head[len(FILES_MARK):].split(FILES_SEPARATOR)
        return cls.of(shown_text, names)


class PageChat(gr.ChatInterface):
    """ChatInterface whose user bubbles show as stored ones do (display.as_text: HTML as text,
    images of other hosts as links; the files sent with it named above it). ChatInterface
    appends the typed text to the chat itself, before its fn runs, so the one place to do it is
    where it appends (gradio 6.31). `files`: the additional input that holds the attached files."""

    def __init__(self, *args, show_user, files, **kwargs):
        self._show_user = show_user
        super().__init__(*args, **kwargs)
        self._files_at = next(i for i, c in enumerate(self.additional_inputs) if c is files)
        self._leave_box_open()

    def _clear_and_save_textbox(self, message):
        """The box emptied as a message is sent, and left open (ChatInterface locks it until the
        reply ends): the next message can be written while this one is answered. Enter does
        not send it before then (habits.py)."""
        return gr.update(value=""), message

    def _leave_box_open(self) -> None:
        """ChatInterface's own steps around a reply lock the box for a retry and, as a reply
        ends, empty it: that would throw away what was written meanwhile. Those steps (lambdas
        of gradio 6.31's chat_interface.py that update the box alone) are made to leave it open
        and its text in place (tests/test_browser_controls.py)."""
        for fn in get_blocks_context().fns.values():
            code = getattr(fn.fn, "__code__", None)
            if (fn.inputs or fn.outputs != [self.textbox] or code is None
                    or inspect.iscoroutinefunction(fn.fn) or code.co_name != "<lambda>"
                    or not code.co_filename.endswith("chat_interface.py")):
                continue
            update = fn.fn()
            if not isinstance(update, dict):
                continue
            if update.get("value", "") is None and update.get("interactive") is True:  # a reply's end
                fn.fn = lambda: gr.update(interactive=True)
            elif update.get("interactive") is False and "placeholder" in update:  # a retry's start
                fn.fn = lambda: gr.update(placeholder="")
            # else: the reply to an edited message keeps the box locked (Esc stops it: habits.py)

    async def _stream_fn(self, message, history, *args):
        files = args[self._files_at] if len(args) > self._files_at else None
        if files and isinstance(message, str):
            kind = type(message) if isinstance(message, Attached) else Attached
            message = kind.of(message, [*getattr(message, "names", ()), *(Path(f).name for f in files)])
        async for update in super()._stream_fn(message, history, *args):
            yield update

    def _append_message_to_history(self, message, history, role="user"):
        if role == "user" and isinstance(message, str):
            names = getattr(message, "names", ())
            message = self._show_user(typed(message) if isinstance(message, Displayed) else message)
            if names:
                message = with_files(message, list(names))
        return super()._append_message_to_history(message, history, role)

    def _pop_last_user_message(self, history):
        history, message = super()._pop_last_user_message(history)
        return history, Displayed.taken(message)

    def _edit_message(self, history, edit_data: gr.EditData):
        history, shown_history, message = super()._edit_message(history, edit_data)
        return history, shown_history, Displayed.taken(message) if isinstance(message, str) else message
