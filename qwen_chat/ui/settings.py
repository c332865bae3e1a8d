"""Settings of the open chat, under it: its system prompt, temperature and reply length
(config.yaml's values unless changed here, so its hot reload still reaches every chat that
changed nothing), and prompt presets: start a new chat from one, save the system prompt as one,
remove one. A chat keeps only what differs from config.yaml (ChatService.set_chat_settings)."""

from __future__ import annotations

import gradio as gr

from .. import i18n
from ..errors import ConfigError, NotFound
from .common import Page, lang_of

FIELDS = ("system_prompt", "temperature", "max_new_tokens")


def render(page: Page) -> dict:
    t = page.t
    with gr.Accordion(t("chat_settings"), open=False, elem_id="chat-settings"):
        preset = gr.Dropdown(choices=[], value=None, label=t("start_from_preset"),
                             elem_id="preset", interactive=True)
        system = gr.Textbox(label=t("system_prompt"), lines=3, max_lines=12,
                            elem_id="chat-system")
        with gr.Row():
            temperature = gr.Slider(0, 2, step=0.05, label=t("temperature"),
                                    elem_id="chat-temperature")
            length = gr.Slider(1, 8192, step=1, label=t("reply_length"),
                               elem_id="chat-max-tokens")
        with gr.Row():
            name = gr.Textbox(placeholder=t("preset_name"), show_label=False, scale=3,
                              elem_id="preset-name")
            save = gr.Button(t("save_preset"), size="sm", scale=1, elem_id="save-preset")
            remove = gr.Button(t("remove_preset"), size="sm", scale=1, elem_id="remove-preset")
        reset = gr.Button(t("use_defaults"), size="sm", elem_id="use-defaults")
    return dict(preset=preset, system=system, temperature=temperature, length=length,
                name=name, save=save, remove=remove, reset=reset)


def wire(page: Page, parts: dict, switched: list) -> None:
    """`switched`: the events after which another conversation (or a new chat) is shown."""
    service, private = page.service, page.private
    fields = [parts["system"], parts["temperature"], parts["length"]]

    def choices(owner: str | None) -> list[tuple[str, str]]:
        return [(p.name, p.key) for p in service.presets(owner)] if owner else []

    def shown(owner, current, overrides: dict | None = None):
        """(settings state, the three fields, the preset list) for the open chat."""
        if current:
            try:
                overrides = service.chat_settings(owner, current)
            except NotFound:
                overrides = {}
        overrides = overrides or {}
        effective = service.effective_config(overrides)
        return (overrides, effective.system_prompt, effective.temperature,
                effective.max_new_tokens, gr.update(choices=choices(owner), value=None))

    def load(owner, current):
        return shown(owner, current)

    def change(key: str):
        def changed(owner, current, overrides, value, request: gr.Request):
            """One field changed: kept only where it differs from config.yaml; saved to the
            open chat at once, or kept for the chat the next message starts."""
            given, overrides = overrides or {}, dict(overrides or {})
            if getattr(service.config().config, key) == value:
                overrides.pop(key, None)
            else:
                overrides[key] = int(value) if key == "max_new_tokens" else value
            if overrides == given:  # e.g. the fields filled as a conversation is opened
                return gr.skip()
            try:
                service.check_chat_settings(overrides)
                if current:
                    service.set_chat_settings(owner, current, overrides)
            except ConfigError as exc:
                gr.Warning(str(exc))
                return gr.skip()
            except NotFound:
                return gr.skip()
            return overrides
        return changed

    def start_from(owner, key, request: gr.Request):
        """A preset picked: a new chat whose system prompt is the preset's."""
        preset = next((p for p in service.presets(owner) if p.key == key), None)
        if preset is None:
            return (gr.skip(),) * 12
        overrides = {"system_prompt": preset.system_prompt}
        return (*page.new_chat(owner, lang_of(request)), *shown(owner, None, overrides)[:4],
                gr.update(value=key), preset.name)

    def save(owner, name, system, key, request: gr.Request):
        if not (name or "").strip():
            gr.Warning(i18n.text(lang_of(request), "preset_needs_name"))
            return gr.skip()
        kept = service.save_preset(owner, name, system, key=key)
        gr.Info(i18n.text(lang_of(request), "preset_saved", name=kept.name))
        return gr.update(choices=choices(owner), value=kept.key)

    def remove(owner, key):
        if key:
            service.remove_preset(owner, key)
        return gr.update(choices=choices(owner), value=None), ""

    def reset(owner, current):
        """Back to config.yaml's values for this chat."""
        if current:
            service.set_chat_settings(owner, current, {})
        return shown(owner, current, {})[:4]

    outputs = [page.settings, *fields, parts["preset"]]
    for event in switched:
        event.then(load, [page.owner, page.current], outputs, **private)
    for part, key in zip(fields, FIELDS):
        part.change(change(key), [page.owner, page.current, page.settings, part],
                    [page.settings], show_progress="hidden", **private)
    parts["preset"].input(start_from, [page.owner, parts["preset"]],
                          [page.current, page.chatbot, page.history, page.seen, page.status,
                           page.conversations, page.settings, *fields, parts["preset"],
                           parts["name"]], cancels=page.replies, **private)
    parts["save"].click(save, [page.owner, parts["name"], parts["system"], parts["preset"]],
                        [parts["preset"]], **private)
    parts["remove"].click(remove, [page.owner, parts["preset"]], [parts["preset"], parts["name"]],
                          **private)
    parts["reset"].click(reset, [page.owner, page.current], outputs[:4], **private)
