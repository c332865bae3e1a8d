"""The web page: Gradio Blocks over the chat service. No SQL and no model code here.

Each browser gets a stable anonymous owner id kept in gr.BrowserState (encrypted with a secret
from the data folder, so it survives restarts); every call to the service is scoped to it.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from . import i18n
from .chat import LOW_SPACE_MB, ChatService, ReplyUpdate, config_warnings
from .config import Config
from .display import as_text, shown
from .errors import MessageTooLong, NotFound, StorageFull
from .store import STREAMING, Message
from .transfer import ImportRefused

log = logging.getLogger(__name__)

LATEX = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "\\[", "right": "\\]", "display": True},
    {"left": "\\(", "right": "\\)", "display": False},
]
CSS = """
#title h1, #title p { font-size: 1.6em; font-weight: 700; margin: 0; }
#status { min-height: 1.5em; opacity: .75; font-size: .9em; }
#model-status { padding: .5em .8em; border-radius: 8px; background: var(--color-accent-soft); }
#conversations label { width: 100%; }
#conversations label.selected, #conversations label.selected * { color: white; }
"""
GENERATE = "generate"  # one concurrency group: as many replies as the engine batches


@dataclass(frozen=True)
class Taken:
    """A message taken from the box (take_message, not queued, so the page shows it at once)
    with what its reply (send, queued) needs: the config read as it arrived, and what to tell
    the user. Only a queued event can show a warning on the page, so send tells it."""
    text: str  # "" when nothing is sent (a message too long stays in the box)
    config: Config
    notes: tuple[str, ...] = ()


def lang_of(request: gr.Request | None) -> str:
    headers = getattr(request, "headers", None) or {}
    return i18n.language(headers.get("accept-language"))


def status_line(update: ReplyUpdate, lang: str) -> str:
    if update.loading is not None:
        return i18n.loading(lang, update.loading)
    stats = update.stats
    if stats.ttft is None:
        return i18n.text(lang, "thinking") if update.status == STREAMING else ""
    if stats.tokens_per_s is None:
        return i18n.text(lang, "status_short", ttft=stats.ttft, tokens=stats.new_tokens)
    return i18n.text(lang, "status", ttft=stats.ttft, tps=stats.tokens_per_s,
                     tokens=stats.new_tokens)


def build_ui(service: ChatService, *, secret: str) -> gr.Blocks:
    t = gr.I18n(**i18n.TRANSLATIONS)

    def choices(owner: str) -> list[tuple[str, str]]:
        return [(c.title, c.id) for c in service.conversations(owner)] if owner else []

    def chat_of(owner: str, conversation_id: str | None, lang: str) -> list[dict]:
        if not (owner and conversation_id):
            return []
        remote = service.config().config.allow_remote_images
        return [shown(m, lang, remote_images=remote)
                for m in service.messages(owner, conversation_id)]

    def read_config(told: int | None, lang: str) -> tuple[Config, int, tuple[str, ...]]:
        """config.yaml for one message, read once as it arrives: (its settings, the version
        this page has now told its user about, what to tell). A refused save, or keys waiting
        for a restart, are told once per saved change on every page (`told` is this page's)."""
        snapshot = service.config()
        notes = tuple(i18n.text(lang, key, **values)
                      for key, values in config_warnings(snapshot, told))
        return snapshot.config, snapshot.version, notes

    def tell(notes: tuple[str, ...]) -> None:
        for note in notes:
            gr.Warning(note)

    def on_load(owner, told, request: gr.Request):
        lang = lang_of(request)
        _, told, notes = read_config(told, lang)  # a page opened after a bad save is told too
        tell(notes)
        owner = owner or secrets.token_hex(16)
        convs = choices(owner)
        current = convs[0][1] if convs else None
        return (owner, gr.update(choices=convs, value=current), current,
                chat_of(owner, current, lang), "", told)

    def take_message(text: str, chat: list, told: int | None, request: gr.Request):
        """Show the user's message at once and clear the box; the reply streams next, with
        the settings read here: (box, chatbot, Taken, told).

        The box stays locked until the reply ends (however it ends): a second message sent
        while the first is answered would otherwise land before the first has its conversation.
        A message too long for the model stays in the box, with a warning; nothing is sent.
        """
        if not text or not text.strip():
            return gr.update(value=""), chat, None, told
        lang = lang_of(request)
        config, told, notes = read_config(told, lang)
        try:
            service.check_length(text, config)
        except MessageTooLong:
            refused = i18n.text(lang, "too_long", budget=service.input_budget(config))
            return gr.skip(), chat, Taken("", config, (*notes, refused)), told
        return (gr.update(value="", interactive=False),
                chat + [{"role": "user", "content": as_text(
                    text, remote_images=config.allow_remote_images)}], Taken(text, config, notes),
                told)

    def typing(owner, current, text, request: gr.Request):
        """The message box changed: prefill what it holds while the user is still typing."""
        if owner and text:
            try:
                service.draft(owner, current, text, session=request.session_hash)
            except Exception:  # noqa: BLE001 - only a head start: Send works without it
                log.exception("Could not prefill the message being typed")

    def stream(updates, owner: str, chat: list, lang: str, known: str | None, config: Config):
        """Relay a service stream to (chatbot, current, conversation list, status)."""
        chat = list(chat) + [{"role": "assistant", "content": ""}]
        told = False
        with contextlib.closing(updates):
            try:
                for update in updates:
                    if update.notice and not told:  # once per conversation (see ChatService.fit)
                        told = True
                        gr.Info(i18n.text(lang, "dropped", budget=service.input_budget(config)))
                    message = Message(update.message_id, update.conversation.id, "assistant",
                                      update.text, 0.0, status=update.status, error=update.error)
                    chat[-1] = shown(message, lang, remote_images=config.allow_remote_images)
                    listing = gr.skip()
                    if update.conversation.id != known:  # a new conversation: list, select it
                        known = update.conversation.id
                        listing = gr.update(choices=choices(owner), value=known)
                    yield chat, known, listing, status_line(update, lang)
            except NotFound:  # deleted in another tab of this browser: start afresh
                gr.Warning(i18n.text(lang, "deleted"))
                yield [], None, gr.update(choices=choices(owner), value=None), ""
            except MessageTooLong:  # a retry after max_input_tokens was lowered
                gr.Warning(i18n.text(lang, "too_long", budget=service.input_budget(config)))
            except StorageFull as exc:  # nothing was saved: the message stays on screen
                gr.Warning(i18n.text(lang, "disk_full", detail=str(exc)))
                chat[-1] = {"role": "assistant", "content": f"⚠️ {exc}"}
                yield chat, known, gr.skip(), ""

    def send(owner, current, taken: Taken | None, chat, request: gr.Request):
        if taken is None:
            return
        tell(taken.notes)
        if not taken.text:
            return
        text, config, lang = taken.text, taken.config, lang_of(request)
        if current and not service.exists(owner, current):
            # Deleted in another tab: keep the message, in a new conversation.
            gr.Warning(i18n.text(lang, "gone"))
            current, chat = None, chat[-1:]
        updates = service.send(owner, current, text, session=request.session_hash, config=config)
        yield from stream(updates, owner, chat, lang, current, config)

    def retry(owner, current, told, request: gr.Request):
        """Relay a new reply to the last message: (chatbot, current, list, status, told)."""
        if not current:
            return
        lang = lang_of(request)
        config, told, notes = read_config(told, lang)
        tell(notes)
        try:
            chat = chat_of(owner, current, lang)
        except NotFound:
            chat = []  # the relay below reports it
        if chat and chat[-1]["role"] == "assistant":
            chat = chat[:-1]
        updates = service.retry(owner, current, session=request.session_hash, config=config)
        for shown_now in stream(updates, owner, chat, lang, current, config):
            yield (*shown_now, told)

    def stop(owner, request: gr.Request):
        """Stop this tab's reply, then show it as saved: marked "stopped"."""
        conversation_id = service.stop(request.session_hash)
        if not conversation_id:
            return gr.skip()
        service.wait_saved(owner, conversation_id)
        return chat_of(owner, conversation_id, lang_of(request))

    def open_conversation(owner, conversation_id, request: gr.Request):
        try:
            return conversation_id, chat_of(owner, conversation_id, lang_of(request)), ""
        except NotFound:
            return None, [], ""

    def rename(owner, current, title):
        if current and title and title.strip():
            service.rename(owner, current, title)
        return gr.update(choices=choices(owner), value=current), ""

    def delete(owner, current):
        if current:
            with contextlib.suppress(NotFound):
                service.delete(owner, current)
        return None, [], gr.update(choices=choices(owner), value=None), gr.update(visible=False)

    def export(owner, current, kind: str, request: gr.Request):
        """Write the open conversation to a file the page offers for download."""
        if not current:
            gr.Warning(i18n.text(lang_of(request), "nothing_to_export"))
            return gr.update(value=None, visible=False)
        try:
            name, text = service.export(owner, current, kind)
        except NotFound:
            return gr.update(value=None, visible=False)
        path = Path(tempfile.mkdtemp(prefix="qwen-chat-export-")) / name
        path.write_text(text, encoding="utf-8")
        return gr.update(value=str(path), visible=True)

    def model_status(request: gr.Request):
        """The banner above the chat while the model loads (or failed) or a save waits for
        the history file, and whether to keep polling: (banner, timer)."""
        snapshot, lang = service.loading(), lang_of(request)
        if snapshot is None:
            if service.history_busy():  # told while this tab's message waits to be saved
                return (gr.update(value=f"⏳ **{i18n.text(lang, 'history_busy_banner')}**",
                                  visible=True), gr.Timer(active=True))
            # Looked at once a second while this tab has a message being saved or answered.
            return (gr.update(value="", visible=False),
                    gr.Timer(active=service.sending(request.session_hash)))
        if snapshot.phase == "failed":
            return (gr.update(value=f"⚠ {as_text(i18n.loading(lang, snapshot))}", visible=True),
                    gr.Timer(active=False))
        line = f"⏳ **{i18n.loading(lang, snapshot)}**  \n{i18n.text(lang, 'loading_hint')}"
        return gr.update(value=line, visible=True), gr.Timer(active=True)

    def system_text(request: gr.Request) -> str:
        lang, info = lang_of(request), service.system()
        if info["loading"] is not None:
            info["precision"] = i18n.loading(lang, info["loading"])
        last = (i18n.text(lang, "last_reply", ttft=info["ttft"], tps=info["tokens_per_s"] or 0.0)
                if info["ttft"] is not None else i18n.text(lang, "none_yet"))
        free = info["disk_free_mb"]
        disk = (i18n.text(lang, "disk_unknown") if free is None else
                i18n.text(lang, "disk_low" if free < LOW_SPACE_MB else "disk_free", free=free))
        if info["history_busy"]:
            disk += " · " + i18n.text(lang, "history_busy")
        return i18n.text(lang, "system_table", **{**info, "last": last, "disk": disk})

    def exporter(kind: str):
        def export_as(owner_id, current_id, request: gr.Request):
            return export(owner_id, current_id, kind, request)
        return export_as

    def import_file(owner, upload, request: gr.Request):
        """Add an uploaded JSON export as a new conversation and open it."""
        lang = lang_of(request)
        try:
            conversation = service.import_export(owner, Path(upload).read_bytes())
        except (ImportRefused, OSError) as exc:
            gr.Warning(i18n.text(lang, "import_refused", reason=exc))
            return gr.skip(), gr.skip(), gr.skip()
        return (conversation.id, chat_of(owner, conversation.id, lang),
                gr.update(choices=choices(owner), value=conversation.id))

    with gr.Blocks(title="Qwen Chat", analytics_enabled=False) as demo:
        owner = gr.BrowserState(None, storage_key="qwen_chat_owner", secret=secret)
        current = gr.State(None)
        pending = gr.State(None)  # the message taken from the box, for its reply (a Taken)
        told = gr.State(None)  # the config version this page last told its user about
        with gr.Sidebar(open=True):
            gr.Markdown(f"### {t('conversations')}")
            new_btn = gr.Button(t("new_chat"), variant="primary", elem_id="new-chat")
            conversations = gr.Radio(choices=[], show_label=False, elem_id="conversations")
            with gr.Row():
                title_box = gr.Textbox(placeholder=t("rename_placeholder"), show_label=False,
                                       scale=3, elem_id="rename-box")
                rename_btn = gr.Button(t("rename"), size="sm", scale=1, elem_id="rename")
            delete_btn = gr.Button(t("delete"), size="sm", variant="stop", elem_id="delete")
            with gr.Group(visible=False) as confirm_box:
                gr.Markdown(t("confirm_delete"))
                with gr.Row():
                    yes_btn = gr.Button(t("yes_delete"), size="sm", variant="stop",
                                        elem_id="confirm-delete")
                    no_btn = gr.Button(t("cancel"), size="sm")
            with gr.Row():
                export_md = gr.Button(t("export_md"), size="sm", elem_id="export-md")
                export_json = gr.Button(t("export_json"), size="sm", elem_id="export-json")
            exported = gr.File(label=t("export_file"), visible=False, interactive=False,
                               elem_id="exported")
            import_btn = gr.UploadButton(t("import_json"), size="sm", file_types=[".json"],
                                         type="filepath", elem_id="import")
            with gr.Accordion(t("system"), open=False, elem_id="system-panel") as system_panel:
                system_box = gr.Markdown("", elem_id="system")
        gr.Markdown(t("title"), elem_id="title")
        gr.Markdown(t("subtitle"), elem_id="subtitle")
        banner = gr.Markdown("", visible=False, elem_id="model-status")
        poll = gr.Timer(1.0, active=False)
        chatbot = gr.Chatbot(elem_id="chatbot", height=520, latex_delimiters=LATEX,
                             buttons=["copy"], placeholder=t("welcome"),
                             feedback_options=None, show_label=False)
        with gr.Row():
            box = gr.Textbox(placeholder=t("message_placeholder"), show_label=False, lines=1,
                             max_lines=8, scale=8, autofocus=True, elem_id="message")
            send_btn = gr.Button(t("send"), variant="primary", scale=0, min_width=90,
                                 elem_id="send")
            stop_btn = gr.Button(t("stop"), variant="stop", scale=0, min_width=90, elem_id="stop")
            retry_btn = gr.Button(t("retry"), scale=0, min_width=90, elem_id="retry")
        status = gr.Markdown("", elem_id="status")

        # Replies in flight at once, the engine's batch; later ones wait in the queue. Every
        # other queued event of the page follows it too (the queue's default would not).
        together = service.engine.max_batch
        private = dict(api_visibility="private", concurrency_limit=together)
        outputs = [chatbot, current, conversations, status]
        demo.load(on_load, [owner, told], [owner, conversations, current, chatbot, status, told],
                  **private)
        # While the model loads, the banner says how far it is, once a second, then goes away.
        demo.load(model_status, outputs=[banner, poll], queue=False, **private)
        poll.tick(model_status, outputs=[banner, poll], queue=False, **private)
        streams = []
        for trigger in (box.submit, send_btn.click):
            streams.append(
                trigger(take_message, [box, chatbot, told], [box, chatbot, pending, told],
                        queue=False, **private)
                .then(send, [owner, current, pending, chatbot], outputs,
                      concurrency_id=GENERATE, **private))
            streams[-1].then(lambda: gr.update(interactive=True), outputs=[box], queue=False,
                             **private)
            # The banner is looked at while the message is saved and answered (a history file
            # locked by another program makes the save wait: the banner says so).
            trigger(lambda: gr.Timer(active=True), outputs=[poll], queue=False, **private)
        # Each keystroke hands the draft to the engine, which prefills it while idle (only the
        # latest counts), so Send has little left to prefill. No output, no progress shown.
        box.input(typing, [owner, current, box], None, queue=False, trigger_mode="always_last",
                  show_progress="hidden", **private)
        for trigger in (retry_btn.click, chatbot.retry):
            streams.append(trigger(retry, [owner, current, told], [*outputs, told],
                                   concurrency_id=GENERATE, **private))
        # Stop ends this tab's reply through the service (it then ends, saved and marked, within
        # one decode step); cancelling the events also drops a reply still waiting in the queue.
        stop_btn.click(stop, [owner], [chatbot], queue=False, **private)
        stop_btn.click(None, cancels=streams, **private)
        # Leaving a conversation stops its reply (kept as "stopped"): the view belongs to the
        # conversation the user is looking at.
        conversations.input(open_conversation, [owner, conversations],
                            [current, chatbot, status], cancels=streams, **private)
        # The chatbot's own clear icon only empties the view: it starts a new chat, deletes nothing.
        for trigger in (new_btn.click, chatbot.clear):
            trigger(lambda: (None, [], gr.update(value=None), ""),
                    outputs=[current, chatbot, conversations, status], cancels=streams,
                    **private)
        for trigger in (rename_btn.click, title_box.submit):
            trigger(rename, [owner, current, title_box], [conversations, title_box], **private)
        delete_btn.click(lambda c: gr.update(visible=bool(c)), [current], [confirm_box],
                         **private)
        no_btn.click(lambda: gr.update(visible=False), outputs=[confirm_box], **private)
        yes_btn.click(delete, [owner, current], [current, chatbot, conversations, confirm_box],
                      cancels=streams, **private)
        for button, kind in ((export_md, "md"), (export_json, "json")):
            button.click(exporter(kind), [owner, current], [exported], **private)
        # The System panel: filled when opened and after every reply.
        system_panel.expand(system_text, outputs=[system_box], **private)
        for event in streams:
            event.then(system_text, outputs=[system_box], **private)
        import_btn.upload(import_file, [owner, import_btn], [current, chatbot, conversations],
                          cancels=streams, **private)
    return demo


def launch_options() -> dict:
    """Options that Gradio 6 takes at launch() rather than in Blocks()."""
    return dict(i18n=gr.I18n(**i18n.TRANSLATIONS), css=CSS, theme=gr.themes.Soft())
