"""A chat's own settings and the prompt presets, through the chat service, with the tiny model,
a real SQLite file and a real config.yaml."""

from __future__ import annotations

import pytest

from qwen_chat.errors import ConfigError
from qwen_chat.presets import BUILTIN
from tests.test_chat import CONFIG, OWNER, setup, write_config  # noqa: F401 - setup is a fixture


def recorded(service, monkeypatch) -> list:
    """What the model is given for each reply: (messages, sampling)."""
    asked, generate = [], service.engine.generate
    monkeypatch.setattr(service.engine, "generate", lambda messages, sampling, **kw: (
        asked.append((messages, sampling)) or generate(messages, sampling, **kw)))
    return asked


def test_a_chat_keeps_its_own_settings_and_follows_config_yaml_for_the_rest(setup, monkeypatch):
    service, config_path = setup
    asked = recorded(service, monkeypatch)
    own = {"system_prompt": "Answer as a pirate.", "max_new_tokens": 3}
    pirate = list(service.send(OWNER, None, "hello", settings=own))[-1].conversation
    plain = list(service.send(OWNER, None, "hello"))[-1].conversation
    assert asked[0][0][0] == {"role": "system", "content": "Answer as a pirate."}
    assert asked[0][1].max_new_tokens == 3 and asked[1][1].max_new_tokens == 12
    assert asked[1][0][0] == {"role": "system", "content": "Be brief."}
    assert service.chat_settings(OWNER, pirate.id) == own

    # config.yaml saved: the chat that set its own system prompt keeps it, takes the rest.
    write_config(config_path, CONFIG.format(n=5).replace("Be brief.", "Be kind."))
    list(service.send(OWNER, pirate.id, "and then?"))
    list(service.send(OWNER, plain.id, "and then?"))
    assert asked[2][0][0]["content"] == "Answer as a pirate." and asked[2][1].max_new_tokens == 3
    assert asked[3][0][0]["content"] == "Be kind." and asked[3][1].max_new_tokens == 5

    # A value config.yaml would refuse is refused here too, naming the key and what is allowed.
    with pytest.raises(ConfigError, match=r"temperature.*9.*0 to 2"):
        service.set_chat_settings(OWNER, pirate.id, {"temperature": 9})
    with pytest.raises(ConfigError, match="port"):
        service.set_chat_settings(OWNER, pirate.id, {"port": 1})
    assert service.chat_settings(OWNER, pirate.id) == own  # nothing changed
    service.set_chat_settings(OWNER, pirate.id, {})  # back to config.yaml's values
    list(service.send(OWNER, pirate.id, "now?"))
    assert asked[4][0][0]["content"] == "Be kind."


def test_presets_are_built_in_editable_and_per_browser(setup):
    service, _ = setup
    names = [p.name for p in service.presets(OWNER)]
    assert names == [p.name for p in BUILTIN] and "翻译（中英互译）" in names and len(names) == 10

    # Edited under its own name: it stays where it was, with the new prompt.
    edited = service.save_preset(OWNER, "Summarise", "Three bullet points, no more.", key="summarise")
    assert edited.key == "summarise"
    assert next(p for p in service.presets(OWNER) if p.key == "summarise").system_prompt == \
        "Three bullet points, no more."
    # Saved under a new name: a new preset of this browser's, after the built-in ones.
    mine = service.save_preset(OWNER, "  Haiku  poet ", "Answer in a haiku.", key="summarise")
    assert mine.key != "summarise" and service.presets(OWNER)[-1].name == "Haiku poet"
    # Removed: a built-in one is hidden from this browser; its own is gone.
    service.remove_preset(OWNER, "email")
    service.remove_preset(OWNER, mine.key)
    keys = [p.key for p in service.presets(OWNER)]
    assert "email" not in keys and mine.key not in keys and len(keys) == 9
    # Another browser sees the built-in ones as they ship.
    assert [p.system_prompt for p in service.presets("x" * 32)] == [p.system_prompt for p in BUILTIN]
