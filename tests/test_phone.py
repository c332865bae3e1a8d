"""Your phone, no cloud: the pairing codes, and a phone for real in a network namespace of its
own (ip netns, a veth pair made here), talking to the app over that link only. Before phone
access is on nothing listens there; the phone scans (opens the QR code's link), sees the
desktop's conversations at a phone's width, is refused once removed; turning phone access off
closes the listener again."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time

import pytest

from qwen_chat.devices import MAX_TRIES, Devices
from qwen_chat.store import Store
from tests.server import REPO, app_servers  # noqa: F401 - fixture
from tests.test_browser import SHOTS, browser, finished_replies, open_app, send  # noqa: F401

OWNER = "p" * 32


@pytest.fixture
def devices(tmp_path):
    store = Store(tmp_path / "chat.db")
    yield Devices(store)
    store.close()


def test_a_code_pairs_one_device_once(devices):
    code = devices.new_code(OWNER)
    assert len(code) == 6 and code.isdigit()
    token = devices.pair(code, "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)")
    assert token and devices.owner_of(token) == OWNER
    assert devices.pair(code, "") is None  # used up
    (device,) = devices.of(OWNER)
    assert device.name == "iPhone"
    devices.revoke(OWNER, device.id)
    assert devices.owner_of(token) is None and devices.of(OWNER) == []
    assert devices.owner_of("not-a-token") is None and devices.owner_of(None) is None


def test_guessing_ends_the_code(devices):
    code = devices.new_code(OWNER)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(MAX_TRIES):
        assert devices.pair(wrong, "") is None
    assert devices.pair(code, "") is None  # five wrong tries ended it
    fresh = devices.new_code(OWNER)
    assert devices.pair(fresh, "") is not None


def _run(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check)


@pytest.fixture
def phone_net():
    """A network namespace for the phone, joined to this one by a veth pair:
    this side 10.X.Y.1/30, the phone 10.X.Y.2/30. Removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        if os.environ.get("CI"):
            pytest.fail("network namespaces need root and iproute2 (CI is set)", pytrace=False)
        pytest.skip("network namespaces need root and iproute2")
    tag = secrets.token_hex(3)
    ns, here, there = f"qcphone{tag}", f"qch{tag}", f"qcp{tag}"
    net = f"10.{100 + secrets.randbelow(100)}.{secrets.randbelow(250)}"
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", here, "type", "veth", "peer", "name", there)
        _run("ip", "link", "set", there, "netns", ns)
        _run("ip", "addr", "add", f"{net}.1/30", "dev", here)
        _run("ip", "link", "set", here, "up")
        _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", there)
        _run("ip", "netns", "exec", ns, "ip", "link", "set", there, "up")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, f"{net}.1"
    finally:
        _run("ip", "netns", "del", ns, check=False)
        _run("ip", "link", "del", here, check=False)


def reachable(ns: str, host: str, port: int) -> bool:
    """Whether a TCP connection from the phone's namespace to host:port is accepted."""
    probe = (f"import socket; s = socket.socket(); s.settimeout(5); "
             f"print(s.connect_ex(('{host}', {port})))")
    out = _run("ip", "netns", "exec", ns, sys.executable, "-c", probe).stdout.strip()
    return out == "0"


def phone(ns: str, url: str, state, **options) -> dict:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    done = _run("ip", "netns", "exec", ns, sys.executable, str(REPO / "tests" / "phone_client.py"),
                url, f"--state={state}", *args, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_phone_in_its_own_network_pairs_sees_the_chats_and_is_refused_once_removed(
        phone_net, browser, app_servers, tiny_dir, tmp_path):
    # phone_net first: the new interface is there before the browser starts, so no network
    # change happens under a page that is loading.
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    ns, host = phone_net
    server = app_servers(model=tiny_dir, extra_config={"max_new_tokens": 6},
                         env={"QWEN_CHAT_LAN_ADDRESS": host})
    desktop = open_app(browser.new_context(), server.url)
    send(desktop, "Hello from the desktop 你好")
    finished_replies(server.db_path, 1)
    assert not reachable(ns, host, server.port)  # nothing listens there before phone access

    desktop.locator("#phone-open").click()
    link = desktop.locator(".phone-link code")
    expect(link).to_contain_text(f"http://{host}:{server.port}/pair?code=")
    expect(desktop.locator(".phone-qr img")).to_be_visible()
    SHOTS.mkdir(exist_ok=True)
    desktop.screenshot(path=SHOTS / "browser-phone-pairing.png")
    url = link.inner_text().strip()
    assert reachable(ns, host, server.port)

    state = tmp_path / "phone-state.json"
    stranger = phone(ns, f"http://{host}:{server.port}/", tmp_path / "stranger.json")
    assert stranger["status"] == 401 and "not paired" in stranger["text"]
    wrong = phone(ns, url[:-6] + f"{(int(url[-6:]) + 1) % 10**6:06d}", tmp_path / "wrong.json")
    assert wrong["status"] == 403
    seen = phone(ns, url, state, expect_chat="Hello from the desktop", shot=SHOTS / "phone-paired.png")
    assert seen["status"] == 200 and seen["url"] == f"http://{host}:{server.port}/"
    assert "Hello from the desktop 你好" in seen["chat"] and seen["scroll_width"] <= 390
    again = phone(ns, f"http://{host}:{server.port}/", state, expect_chat="Hello from the desktop")
    assert again["status"] == 200  # the cookie keeps it paired: nothing to type

    desktop.locator("#phone-open").click()  # the panel again: the phone is listed
    desktop.locator("#phone-devices input").click()
    option = desktop.locator("#phone-devices li", has_text="Android phone")
    expect(option).to_be_visible()
    option.click()
    expect(desktop.locator("#phone-devices input")).to_have_value(re.compile("Android phone"))
    desktop.locator("#phone-remove").click()
    deadline = time.monotonic() + 30
    while True:  # the removal is a database write: it lands within moments
        removed = phone(ns, f"http://{host}:{server.port}/", state)
        if removed["status"] == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert removed["status"] == 401 and "not paired" in removed["text"]

    desktop.locator("#phone-off").click()
    deadline = time.monotonic() + 30
    while reachable(ns, host, server.port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not reachable(ns, host, server.port)
    expect(desktop.locator("#phone-panel")).to_be_hidden()
