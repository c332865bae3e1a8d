"""What the page's builders share: the service, the page's per-tab state, the reading of
config.yaml once per message, and the view of a conversation. No components are built here."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import gradio as gr
from gradio.context import LocalContext

from .. import i18n
from ..chat import ChatService, ReplyUpdate, config_warnings
from ..config import Config
from ..digests import json_digest
from ..display import shown
from ..store import STREAMING
from . import listing

LATEX = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "\\[", "right": "\\]", "display": True},
    {"left": "\\(", "right": "\\)", "display": False},
]
GENERATE = "generate"  # one concurrency group: as many replies as the engine batches
MAX_TABS = 1000  # tabs whose list is remembered (Page.listing), the oldest forgotten first
# A chat handed to a tab this recently (switching, new chat, a reply sent) is left alone by the
# live tick (live.py): a tick that set out before it would put the previous one back.
SETTLE_S = 1.0


class Unknown:
    """What Page.handed_chat says of a tab that no event of its own has handed a chat."""


UNKNOWN = Unknown()


def lang_of(request: gr.Request | None) -> str:
    headers = getattr(request, "headers", None) or {}
    return i18n.language(headers.get("accept-language"))


FILES_MARK, FILES_SEPARATOR = "📎 ", " · "


def with_files(shown_text: str, names: list[str]) -> str:
    """A user bubble sent with files: their names above its words (as sent, and reopened)."""
    return f"{FILES_MARK}{FILES_SEPARATOR.join(names)}\n\n{shown_text}"


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


@dataclass
class Page:
    """The service and the components that several builders read or write. Each builder sets
    the components it makes (sidebar: `conversations`; chat: `chatbot`, `status`, ...)."""
    service: ChatService
    t: gr.I18n
    owner: gr.BrowserState
    current: gr.State  # the open conversation's id, None for a new chat
    told: gr.State  # the config version this page last told its user about
    seen: gr.State  # how many stored messages of `current` the chat shows (see chat.respond)
    settings: gr.State  # the open chat's own settings (a new chat's, until it is stored)
    files: gr.State  # files attached to the message being written (paths), until it is sent
    # Set by the builders: the sidebar's list, the chat's components and its reply events.
    conversations: gr.HTML | None = None
    chatbot: gr.Chatbot | None = None
    history: gr.State | None = None  # ChatInterface's copy of the chat, handed to its fn
    box: gr.Textbox | None = None
    status: gr.Markdown | None = None
    system_box: gr.Markdown | None = None
    replies: list = field(default_factory=list)  # the events that stream a reply (to cancel)
    _lists: dict = field(default_factory=dict)  # tab (session) -> digest of its list's value
    _opened: dict = field(default_factory=dict)  # tab (session) -> (when, which chat) last handed

    @property
    def private(self) -> dict:
        """Options of every event of the page: not an API for scripts, and as many at once as
        the engine batches (the queue's default would be one)."""
        return dict(api_visibility="private", concurrency_limit=self.service.engine.max_batch)

    def shows(self, chat: list[dict], conversation_id: str | None, *,
              opened: bool = True) -> tuple[list[dict], list[dict], int]:
        """Outputs [chatbot, history, seen] for a chat loaded from the store (conversation
        `conversation_id`; None: a new one). ChatInterface's history holds messages as the
        chatbot hands them back (content as a list of blocks: its retry and undo read them so),
        hence the round trip through the chatbot. `opened`: the tab's own event hands it (not
        the live tick's refresh)."""
        history = self.chatbot.preprocess(self.chatbot.postprocess(chat)) if chat else []
        if opened:
            self.opened(conversation_id)
        return chat, history, len(chat)

    def opened(self, conversation_id: str | None) -> None:
        """Remember when, and which chat, the tab of the event being handled was handed (see
        SETTLE_S and live.py)."""
        _remember(self._opened, (time.monotonic(), conversation_id))

    def opened_lately(self, session: str) -> bool:
        """Whether the tab was handed a chat within SETTLE_S seconds."""
        return time.monotonic() - self._opened.get(session, (float("-inf"), None))[0] < SETTLE_S

    def rehand(self, session: str, conversation_id: str | None) -> None:
        """The tab was moved to another chat by a look (its chat was deleted elsewhere)."""
        if session in self._opened:
            self._opened[session] = (self._opened[session][0], conversation_id)

    def handed_chat(self, session: str) -> str | None | Unknown:
        """The chat the tab's own events last handed it (None: a new chat), or UNKNOWN."""
        return self._opened.get(session, (None, UNKNOWN))[1]

    # Reads the builders share ----------------------------------------------------------------
    def listing(self, owner: str | None, current: str | None, lang: str) -> dict:
        """The sidebar list's value: this owner's conversations, `current` selected. What each
        tab was last handed is remembered (see shows_list)."""
        return self.handed(self.list_value(owner, current, lang))

    def list_value(self, owner: str | None, current: str | None, lang: str) -> dict:
        return listing.listing(self.service.conversations(owner) if owner else [], current, lang)

    def handed(self, value: dict) -> dict:
        """Remember `value` as the list the tab of the event being handled is handed."""
        _remember(self._lists, json_digest(value))
        return value

    def shows_list(self, session: str, value: dict) -> bool:
        """Whether the tab was last handed this very list (live.py sends only a different one:
        a list sent again closes a row's open menu)."""
        return self._lists.get(session) == json_digest(value)

    def chat_of(self, owner: str | None, conversation_id: str | None, lang: str,
                messages: list | None = None) -> list[dict]:
        """The conversation as the chat shows it (NotFound if it is gone); `messages`: its
        stored messages when the caller has just read them."""
        if not (owner and conversation_id):
            return []
        remote = self.service.config().config.allow_remote_images
        attached = self.service.attachments.of(conversation_id)
        chat = []
        for m in messages if messages is not None else self.service.messages(owner, conversation_id):
            item = shown(m, lang, remote_images=remote)
            names = [a.name for a in attached.get(m.id, [])]
            if names and m.role == "user":  # the files it was sent with, above its words
                item["content"] = with_files(item["content"], names)
            chat.append(item)
        return chat

    def new_chat(self, owner: str | None, lang: str) -> tuple:
        """Outputs [current, chatbot, history, seen, status, conversation list] for a new,
        empty chat."""
        return (None, *self.shows([], None), "", self.listing(owner, None, lang))

    def read_config(self, told: int | None, lang: str) -> tuple[Config, int, tuple[str, ...]]:
        """config.yaml for one message, read once as it arrives: (its settings, the version
        this page has now told its user about, what to tell). A refused save, or keys waiting
        for a restart, are told once per saved change on every page (`told` is this page's)."""
        snapshot = self.service.config()
        notes = tuple(i18n.text(lang, key, **values)
                      for key, values in config_warnings(snapshot, told))
        return snapshot.config, snapshot.version, notes


def _remember(records: dict, value) -> None:
    """records[tab] = value for the tab of the event being handled (Gradio's own context of
    the event), the most recent MAX_TABS tabs kept."""
    session = getattr(LocalContext.request.get(None), "session_hash", None)
    if session:
        records.pop(session, None)
        records[session] = value
        while len(records) > MAX_TABS:
            records.pop(next(iter(records)))


def tell(notes: tuple[str, ...]) -> None:
    for note in notes:
        gr.Warning(note)
