"""Prompt presets: a name and the system prompt a new chat starts with. A few are built in, in
English and Chinese; each browser can edit, add and remove its own (stored in SQLite).

A built-in one the user edits becomes theirs under the same key (it then replaces the built-in
one in their list); one they remove is hidden from their list. Nothing is shared between
browsers."""

from __future__ import annotations

import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    key: str
    name: str
    system_prompt: str
    builtin: bool = False


BUILTIN = (
    Preset("translate", "Translate 中⇄英",
           "You are a translator. Translate the user's text: Chinese into English, any other "
           "language into Simplified Chinese. Reply with the translation only, keeping the "
           "meaning, tone and formatting.", True),
    Preset("polish", "Polish my writing",
           "You are an editor. Rewrite the user's text so that it reads clearly and correctly, "
           "in the same language, keeping its meaning. Reply with the rewritten text, then one "
           "line on what you changed.", True),
    Preset("summarise", "Summarise",
           "Summarise the text the user sends in a few short bullet points, in the language of "
           "the text. Keep names, numbers and dates exact.", True),
    Preset("email", "Write an email",
           "You write emails. From the user's notes, write a polite, concise email with a "
           "subject line, in the language of the notes.", True),
    Preset("code", "Explain code",
           "You are a patient programming teacher. Explain what the user's code does, step by "
           "step, then point out bugs or risks. Use short code snippets where they help.", True),
    Preset("zh_translate", "翻译（中英互译）",
           "你是一名翻译。把用户的文字翻译成另一种语言：中文译成英文，其他语言译成简体中文。只输出译文，"
           "保留原意、语气和格式。", True),
    Preset("zh_polish", "润色文字",
           "你是一名编辑。请在不改变原意的前提下，用同一种语言把用户的文字改写得通顺、准确。先给出改写后的"
           "文字，再用一句话说明改了什么。", True),
    Preset("zh_summarise", "总结要点",
           "用几条简短的要点总结用户发来的文字，使用原文的语言。人名、数字和日期保持准确。", True),
    Preset("zh_email", "写邮件",
           "你负责写邮件。根据用户的要点写一封礼貌、简洁、带主题行的邮件，使用要点所用的语言。", True),
    Preset("zh_code", "解释代码",
           "你是一位耐心的编程老师。先一步步解释用户的代码做了什么，再指出其中的错误或风险，必要时给出简短的"
           "代码示例。", True),
)


def listed(store, owner: str) -> list[Preset]:
    """The presets `owner` sees: built-in ones (as they edited them) and then their own."""
    rows = {r["key"]: r for r in store.presets(owner)}
    shown = []
    for preset in BUILTIN:
        row = rows.pop(preset.key, None)
        if row is None:
            shown.append(preset)
        elif not row["hidden"]:
            shown.append(Preset(preset.key, row["name"], row["system_prompt"], True))
    shown += [Preset(r["key"], r["name"], r["system_prompt"]) for r in rows.values()
              if not r["hidden"]]
    return shown


def save(store, owner: str, name: str, system_prompt: str, *, key: str | None = None) -> Preset:
    """Save a preset: over the one `key` names when the name is unchanged (an edit), else as a
    new one of `owner`'s."""
    name = " ".join(name.split())[:80]
    current = next((p for p in listed(store, owner) if p.key == key), None) if key else None
    if current is None or current.name != name:
        current = Preset("own-" + secrets.token_hex(6), name, system_prompt)
    store.put_preset(owner, current.key, name, system_prompt)
    return Preset(current.key, name, system_prompt, current.builtin)


def remove(store, owner: str, key: str) -> None:
    """Hide a preset from `owner`'s list (a built-in one stays hidden; their own is gone)."""
    preset = next((p for p in listed(store, owner) if p.key == key), None)
    if preset is not None:
        store.put_preset(owner, key, preset.name, preset.system_prompt, hidden=True)
