"""The terminal chat, driven through a pseudo-terminal (pexpect) like a user at a keyboard, on
the same data folder as a running web app: both see the same conversations."""

from __future__ import annotations

import sqlite3
import sys
import time

import pexpect
from gradio_client import Client

from tests.server import REPO, app_env, app_servers  # noqa: F401 - app_servers is a fixture

PROMPT = "you> "


def test_terminal_chat_shares_conversations_with_the_page(app_servers, gguf_path, tmp_path):
    server = app_servers(model=gguf_path, extra_config={"temperature": 0.0, "max_new_tokens": 32})
    owner = "b" * 32  # a browser that used the page
    page = Client(server.url, verbose=False)
    page.predict(owner, "", "hello from the page", api_name="/chat")

    cli = pexpect.spawn(sys.executable, [str(REPO / "app.py"), "--cli", "--config", str(server.config_path)],
                        cwd=str(tmp_path), env=app_env(), encoding="utf-8", timeout=180)
    cli.expect_exact("/help for commands")
    cli.expect_exact(PROMPT)
    cli.sendline("/list")  # the page's conversation is there
    cli.expect_exact("1. hello from the page")
    cli.expect_exact(PROMPT)

    cli.sendline("What is the capital of France?")
    cli.expect_exact("qwen> ")
    cli.expect_exact("Paris")
    cli.expect(r"\(complete: first token [\d.]+ s")
    cli.expect_exact(PROMPT)
    cli.sendline("/list")
    cli.expect_exact("*  1. What is the capital of France?")
    cli.expect_exact("2. hello from the page")
    cli.expect_exact(PROMPT)

    cli.sendline("/export md")
    cli.expect(r"Exported to (\S.*\.md)")
    exported = cli.match.group(1).strip()
    cli.expect_exact(PROMPT)
    cli.sendline("/switch 2")
    cli.expect_exact("Switched to: hello from the page")
    cli.expect_exact("you> hello from the page")
    cli.expect_exact(PROMPT)
    cli.sendline("/new")
    cli.expect_exact("New conversation")
    cli.expect_exact(PROMPT)
    cli.sendline("/switch 9")
    cli.expect_exact("Use /switch N with N from 1 to 2")
    cli.expect_exact(PROMPT)
    cli.sendline("/quit")
    cli.expect(pexpect.EOF)
    cli.close()
    assert cli.exitstatus == 0, cli.before

    markdown = open(exported, encoding="utf-8").read()
    assert "**You**:\n\nWhat is the capital of France?" in markdown and "Paris" in markdown
    # The page (same owner) now lists the terminal's conversation too, with its reply.
    listing = page.predict(owner, api_name="/conversations")
    assert [c["title"] for c in listing] == ["What is the capital of France?", "hello from the page"]
    reply = listing[0]["messages"][-1]
    assert reply["status"] == "complete" and "Paris" in reply["content"]


def test_ctrl_c_stops_a_reply_and_ctrl_d_leaves(app_servers, tiny_dir, tmp_path):
    server = app_servers(model=tiny_dir, extra_config={"max_new_tokens": 3000,
                                                       "repetition_penalty": 1.0})
    server.stop()  # the terminal alone on this data folder
    cli = pexpect.spawn(sys.executable, [str(REPO / "app.py"), "--cli", "--config", str(server.config_path)],
                        cwd=str(tmp_path), env=app_env(), encoding="utf-8", timeout=180)
    cli.expect_exact(PROMPT)
    cli.sendline("talk forever")
    cli.expect_exact("qwen> ")
    time.sleep(1.5)  # the reply streams (3,000 tokens take about 10 s)
    cli.sendintr()  # Ctrl+C
    cli.expect_exact("(stopped)")
    cli.expect_exact(PROMPT)
    cli.sendeof()  # Ctrl+D
    cli.expect(pexpect.EOF)
    cli.close()
    assert cli.exitstatus == 0 and "Traceback" not in cli.before
    server.start()
    with sqlite3.connect(server.db_path) as conn:
        statuses = [r[0] for r in conn.execute("SELECT status FROM messages ORDER BY id")]
    assert statuses == ["complete", "stopped"]
