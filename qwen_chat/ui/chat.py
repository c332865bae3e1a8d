"""The chat: Gradio's ChatInterface, its fn a thin call into the chat service.

SQLite holds the conversation; the ChatInterface shows it. What it hands its fn is used for one
thing: how many messages the chat still shows. Fewer than the page had loaded means the user
went back (edited a message, pressed retry or undo): the new message replaces the turns after
that point (ChatService.send's `keep`), and the KV cache is cut back to the common prefix.
"""

from __future__ import annotations

import contextlib
import logging

import gradio as gr
from gradio.context import get_blocks_context

from .. import documents, i18n
from ..documents import DocumentRefused
from ..display import as_text, plain, shown, typed
from ..errors import MessageTooLong, NotFound, StorageFull
from ..store import Message
from .common import GENERATE, LATEX, Page, lang_of, status_line, tell
from .page_chat import Displayed, PageChat
from .system import system_text

log = logging.getLogger(__name__)


def render(page: Page) -> PageChat:
    """The chat column: ChatInterface (chatbot, message box with Send and Stop), the status
    line under it. Wires what happens as a message is typed, sent, stopped."""
    service, t = page.service, page.t

    def remote_images() -> bool:
        return service.config().config.allow_remote_images

    def show_user(text: str) -> str:
        return as_text(text, remote_images=remote_images())

    def too_long(message, request: gr.Request):
        """Refuse, before it leaves the box, a message the model cannot read whole."""
        if not isinstance(message, str) or not message.strip():
            return gr.validate(False, "")
        try:
            service.check_length(message)
        except MessageTooLong:
            return gr.validate(False, i18n.text(lang_of(request), "too_long",
                                                budget=service.input_budget()))
        return gr.validate(True, "")

    def same(item: dict, stored: Message, lang: str) -> bool:
        """Whether a message the chat shows is the stored one."""
        expected = (show_user(stored.content) if stored.role == "user" else
                    shown(stored, lang, remote_images=remote_images())["content"])
        showing = plain(item.get("content"))
        if stored.role == "user":  # sent with files: their names above it (common.with_files)
            showing = str(Displayed.taken(showing))
        return showing.strip() == expected.strip()

    def rewind(owner: str, current: str, history: list, seen: int | None, message: str,
               lang: str) -> tuple[int | None, str]:
        """(keep, text): where the message goes and what it says, for a chat that shows
        `history`. A chat showing fewer messages than this page had shown was taken back to
        that point, if what it still shows last is what is stored there (another tab may have
        changed the conversation meanwhile: then the message goes at the end, nothing is
        deleted)."""
        text = typed(message) if isinstance(message, Displayed) else message
        keep = len(history)
        if not seen or keep >= seen:
            return None, text
        stored = service.messages(owner, current)
        if keep > len(stored) or (keep and not same(history[-1], stored[keep - 1], lang)):
            return None, text
        if (keep < len(stored) and stored[keep].role == "user"
                and show_user(stored[keep].content) == message):
            text = stored[keep].content  # a retry, or an edit that changed nothing
        return keep, text

    def respond(message, history, owner, current, told, seen, settings, files,
                request: gr.Request):
        """Yields (reply, current, conversation list, status, told, seen, box, System panel,
        attached files, their line, their ✕): the first takes the files (they go with this message),
        the last gives the box its placeholder back (ChatInterface empties it as a message is
        sent) and the System panel the reply's figures."""
        last, sent = None, (gr.skip(),) * 3
        if files:
            sent = ([], "", gr.update(visible=False))
        # Closed at once with this generator (Stop, a closed tab): the reply then ends too.
        with contextlib.closing(replying(message, history, owner, current, told, seen,
                                         settings, files, request)) as updates:
            for last in updates:
                yield (*last, gr.skip(), gr.skip(), *sent)
                sent = (gr.skip(),) * 3
        if last is not None:
            yield (*last[:2], gr.skip(), *last[3:], gr.update(placeholder=t("message_placeholder")),
                   system_text(service, lang_of(request)), *sent)

    def replying(message, history, owner, current, told, seen, settings, files, request):
        """The reply's updates: (reply, current, conversation list, status, told, seen)."""
        lang = lang_of(request)
        config, told, notes = page.read_config(told, lang)
        tell(notes)
        if current and not service.exists(owner, current):
            gr.Warning(i18n.text(lang, "gone"))  # deleted in another tab: a new conversation
            current = None
        keep, text = (rewind(owner, current, history, seen, message, lang) if current
                      else (None, typed(message) if isinstance(message, Displayed) else message))
        before, seen = seen, len(history) + 2
        updates = service.send(owner, current, str(text), session=request.session_hash,
                               config=config, keep=keep, settings=settings or None,
                               files=files or None)
        known, told_dropped = current, False
        with contextlib.closing(updates):
            try:
                for update in updates:
                    if update.notice and not told_dropped:  # once per conversation
                        told_dropped = True
                        gr.Info(i18n.text(lang, "dropped", budget=service.input_budget(config)))
                    reply = shown(Message(update.message_id, update.conversation.id, "assistant",
                                          update.text, 0.0, status=update.status,
                                          error=update.error),
                                  lang, remote_images=config.allow_remote_images)
                    listing = gr.skip()
                    if update.conversation.id != known:  # a new conversation: list, select it
                        known = update.conversation.id
                        listing = page.listing(owner, known, lang)
                    yield reply, known, listing, status_line(update, lang), told, seen
            except NotFound:  # deleted in another tab while the reply streamed
                gr.Warning(i18n.text(lang, "deleted"))
                yield "", None, page.listing(owner, None, lang), "", told, 0
            except MessageTooLong:  # a retry after max_input_tokens was lowered
                gr.Warning(i18n.text(lang, "too_long", budget=service.input_budget(config)))
                yield "", known, gr.skip(), "", told, before
            except StorageFull as exc:  # nothing was saved: the message stays on screen
                gr.Warning(i18n.text(lang, "disk_full", detail=str(exc)))
                yield f"⚠️ {exc}", known, gr.skip(), "", told, seen
            finally:
                page.opened(known)  # the reply's end; while it sends, ticks skip the tab

    def typing(owner, current, settings, text, files, request: gr.Request):
        """The message box changed (or a file was attached): prefill what it holds while the
        user is still typing, its attached short documents first."""
        if owner and (text or files):
            try:
                service.draft(owner, current, text or "", session=request.session_hash,
                              settings=settings, files=files or None)
            except Exception:  # noqa: BLE001 - only a head start: Send works without it
                log.exception("Could not prefill the message being typed")

    def attached_line(files: list[str], lang: str) -> str:
        """What the attached files cost: tokens the model reads, and about how long."""
        parts = []
        for path in files:
            read = service.read_file(path)
            tokens, seconds = service.reading_cost(read)
            parts.append(i18n.text(lang, "attached" if read.short else "attached_long",
                                   name=read.document.name, tokens=f"{tokens:,}",
                                   total=f"{read.tokens:,}", seconds=f"{max(seconds, 0.1):.1f}"))
        return "  \n".join(parts)

    def attach(owner, current, settings, text, files, uploads, request: gr.Request):
        """Files chosen with 📎: read now (one that cannot be is refused, with why), shown with
        their cost, and prefilled with what is typed, before the message is sent."""
        lang = lang_of(request)
        files = list(files or [])
        for path in uploads or []:
            try:
                service.read_file(path)
            except (DocumentRefused, OSError) as exc:
                gr.Warning(i18n.text(lang, "attach_refused", reason=exc))
                continue
            files.append(path)
        typing(owner, current, settings, text, files, request)
        return files, attached_line(files, lang), gr.update(visible=bool(files))

    def forget_files():
        return [], "", gr.update(visible=False)

    def unsent(owner, current, shown_chat, seen) -> bool:
        """Whether the chat shows one user message more than is stored: sent, then stopped
        while it waited for room in the batch (its reply never began)."""
        if not shown_chat or shown_chat[-1].get("role") != "user" or len(shown_chat) != seen + 1:
            return False
        return len(service.messages(owner, current) if current else []) == seen

    def stop(owner, current, text, shown_chat, seen, settings, files, request: gr.Request):
        """Stop this tab's reply (it ends within one decode step), then show it as saved:
        marked "stopped". (ChatInterface's cancel of the event may have ended it first.) A
        message stopped before its reply began is stored as sent, with its files: nothing
        typed is lost."""
        session, lang = request.session_hash, lang_of(request)
        conversation_id = service.stop(session) or current
        placeholder = gr.update(placeholder=t("message_placeholder"), interactive=True)
        files_out = (gr.skip(),) * 3
        listing = gr.skip()
        try:
            if text and not service.sending(session) and unsent(owner, current, shown_chat, seen):
                conversation_id = service.keep_unanswered(
                    owner, current, str(text), settings=settings or None, files=files or None)
                files_out = ([], "", gr.update(visible=False))  # they went with the message
                listing = page.listing(owner, conversation_id, lang)
            if not conversation_id:
                return (gr.skip(),) * 4 + (placeholder, listing, *files_out)
            service.wait_saved(owner, conversation_id)
            chat = page.chat_of(owner, conversation_id, lang)
            return (conversation_id, *page.shows(chat, conversation_id), placeholder, listing,
                    *files_out)
        except NotFound:
            return (gr.skip(),) * 4 + (placeholder, listing, *files_out)

    private = page.private
    chatbot = gr.Chatbot(elem_id="chatbot", height=520, latex_delimiters=LATEX,
                         buttons=["copy"], placeholder=t("welcome"), feedback_options=None,
                         show_label=False, editable="user")
    box = gr.Textbox(placeholder=t("message_placeholder"), show_label=False, lines=1,
                     max_lines=8, autofocus=True, elem_id="message", submit_btn=t("send"),
                     stop_btn=t("stop"))
    status = gr.Markdown("", elem_id="status", render=False)
    attached = gr.Markdown("", elem_id="attached", render=False)
    unattach = gr.Button("✕", size="sm", scale=0, min_width=40, visible=False,
                         elem_id="unattach", render=False)
    chat = PageChat(
        respond, show_user=show_user, files=page.files, chatbot=chatbot, textbox=box, editable=True,
        additional_inputs=[page.owner, page.current, page.told, page.seen, page.settings,
                           page.files],
        additional_outputs=[page.current, page.conversations, status, page.told, page.seen,
                            box, page.system_box, page.files, attached, unattach],
        validator=too_long, concurrency_limit=service.engine.max_batch, api_name="page_reply",
        api_visibility="private", fill_height=False, show_progress="hidden")
    with gr.Row(elem_id="attach-row"):
        attach_btn = gr.UploadButton("📎 " + t("attach"), file_count="multiple", type="filepath",
                                     file_types=sorted(documents.SUFFIXES), size="sm", scale=0,
                                     elem_id="attach")
        attached.render()
        unattach.render()
    status.render()
    page.chatbot, page.history, page.box, page.status = chatbot, chat.chatbot_state, box, status
    attach_btn.upload(attach, [page.owner, page.current, page.settings, box, page.files, attach_btn],
                      [page.files, attached, unattach], **private)
    unattach.click(forget_files, None, [page.files, attached, unattach], **private)
    # Each keystroke hands the draft to the engine, which prefills it while idle (only the
    # latest counts), so Send has little left to prefill. No output, no progress shown.
    box.input(typing, [page.owner, page.current, page.settings, box, page.files], None, queue=False,
              trigger_mode="always_last", show_progress="hidden", **private)
    # Stop (ChatInterface cancels the reply's event) also ends the generation at once, through
    # the service, and shows the reply as saved.
    stop_inputs = [page.owner, page.current, chat.saved_input, chatbot, page.seen, page.settings,
                   page.files]
    stop_outputs = [page.current, chatbot, chat.chatbot_state, page.seen, box, page.conversations,
                    page.files, attached, unattach]
    box.stop(stop, stop_inputs, stop_outputs, queue=False, **private)
    # The events that stream a reply (a message sent, retried, edited): replies of the page
    # and of scripts (/chat) share the engine's batch, and leaving a conversation cancels them.
    replies = [fn for fn in get_blocks_context().fns.values() if fn.name == "_submit_fn"]
    for fn in replies:
        fn.concurrency_id = GENERATE
    page.replies.extend(fn.get_config() for fn in replies)
    box.stop(None, cancels=page.replies, **private)
    # Esc stops a reply also where ChatInterface shows no Stop button (the reply to an edited
    # message): habits.py clicks this hidden one then.
    stop_key = gr.Button("stop", elem_id="stop-reply", elem_classes=["hidden-control"])
    stop_key.click(stop, stop_inputs, stop_outputs, cancels=page.replies, **private)
    return chat
