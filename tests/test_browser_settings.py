"""A chat's own settings and the prompt presets in a real headless Chromium: a chat started
from a preset keeps its system prompt (in the database, and on screen when opened again), a
changed temperature is saved with it, a new chat starts from config.yaml's values, and a
prompt saved as a preset is there after a reload."""

from __future__ import annotations

import json
import sqlite3

import pytest

from qwen_chat.config_template import DEFAULT_SYSTEM_PROMPT
from qwen_chat.presets import BUILTIN
from tests.server import app_servers  # noqa: F401 - fixture
from tests.test_browser import SHOTS, browser, open_app, send  # noqa: F401 - a fixture
from tests.test_browser_edit import settled

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def chat_settings(db_path) -> list[dict]:
    with sqlite3.connect(db_path) as conn:
        return [json.loads(s) if s else {} for (s,) in
                conn.execute("SELECT settings FROM conversations ORDER BY rowid")]


def pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


def test_presets_and_a_chats_own_settings(browser, app_servers, tiny_dir):
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)
    server = app_servers(model=tiny_dir, extra_config={"max_new_tokens": 4, "temperature": 0.5})
    page = open_app(browser.new_context(viewport={"width": 1280, "height": 1100}), server.url)
    page.locator("#chat-settings button").first.click()  # open the accordion
    system = page.locator("#chat-system textarea")
    expect(system).to_have_value(DEFAULT_SYSTEM_PROMPT)  # config.yaml's

    translator = next(p for p in BUILTIN if p.key == "zh_translate")
    pick(page, "preset", translator.name)
    expect(system).to_have_value(translator.system_prompt)
    temperature = page.locator("#chat-temperature input[type=number]")
    temperature.fill("0")
    temperature.press("Enter")
    send(page, "hello")
    settled(server.db_path, 2)
    assert chat_settings(server.db_path) == [{"system_prompt": translator.system_prompt,
                                              "temperature": 0}]
    page.screenshot(path=SHOTS / "browser-chat-settings.png")

    # A new chat: config.yaml's values again; the first chat keeps its own.
    page.locator("#new-chat").click()
    expect(system).to_have_value(DEFAULT_SYSTEM_PROMPT)
    expect(temperature).to_have_value("0.5")
    send(page, "another")
    settled(server.db_path, 4)
    assert chat_settings(server.db_path)[1] == {}
    page.locator("#conversations .title", has_text="hello").click()
    expect(system).to_have_value(translator.system_prompt)
    expect(temperature).to_have_value("0")

    # The prompt, edited, saved as a preset of this browser's: listed after a reload.
    system.fill("Reply in French only.")
    page.locator("#preset-name input, #preset-name textarea").first.fill("French")
    page.locator("#save-preset").click()
    expect(page.locator("#preset input").first).to_have_value("French")
    assert chat_settings(server.db_path)[0]["system_prompt"] == "Reply in French only."
    page.reload()
    page.locator("#chat-settings button").first.click()
    page.locator("#preset input").first.click()
    expect(page.get_by_role("option", name="French", exact=True)).to_have_count(1)
