"""The page is served before the model is ready, and says how far loading is.

* Progress: a download reports its real bytes; a phase without a byte count is measured against
  the time it took at the last start (kept in the cache folder) and never shows 100% early.
* A message sent while the model loads is stored at once and answered when the model is ready;
  a model that cannot be loaded turns the waiting reply into a stored error that says why.
* Model sources: a ModelScope id without the optional package is refused at once with the
  command that installs it.
* For real: `python app.py` with a .gguf not yet converted serves the page within seconds;
  Chromium shows "Converting ... %" while the user types a question, which is answered when the
  model is ready; /health goes from 503 "loading" to 200 "ok".
"""

from __future__ import annotations

import importlib.util
import json
import re
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from qwen_chat import i18n
from qwen_chat.chat import ChatService
from qwen_chat.config import ConfigWatcher, load_config
from qwen_chat.engine.local import Engine
from qwen_chat.errors import ModelLoadError
from qwen_chat.engine.startup import CAP, LoadingEngine, LoadProgress
from qwen_chat.store import Store
from tests.server import app_servers, free_port, run_app  # noqa: F401 - app_servers: a fixture

OWNER = "o" * 32


# Progress -----------------------------------------------------------------------------------
def test_a_download_reports_its_bytes_and_an_estimate_never_shows_done_early(tmp_path):
    timings = tmp_path / "cache" / "load-timings.json"
    progress = LoadProgress(timings)
    assert progress.snapshot().phase == "start"
    assert i18n.loading("en", progress.snapshot()) == "Loading the model…"

    progress.begin("download", total_mb=1000.0)
    progress.downloaded(430.0)
    snap = progress.snapshot()
    assert (snap.phase, snap.percent, snap.done_mb, snap.total_mb) == ("download", 43, 430.0, 1000.0)
    assert i18n.loading("en", snap) == "Downloading the model (once): 43% (430 of 1,000 MB)"
    assert i18n.loading("zh", snap) == "正在下载模型（仅首次）：43%（430 / 1,000 MB）"

    # 1 MB of "load" at the default rate is expected to take at least half a second: after
    # 0.3 s it shows part of the way, and however long it takes, never more than CAP.
    progress.begin("load", size_mb=1.0)
    time.sleep(0.3)
    assert 20 <= progress.snapshot().percent < 95
    time.sleep(0.4)
    assert progress.snapshot().fraction == CAP
    assert i18n.loading("en", progress.snapshot()) == "Loading model 95%"
    progress.ready()
    assert progress.snapshot().phase == "ready"

    # What the phase really took is remembered on disk for the next start's estimate.
    remembered = json.loads(timings.read_text(encoding="utf-8"))
    assert set(remembered) == {"load"} and 0.6 < remembered["load"] < 5.0
    again = LoadProgress(timings)
    again.begin("load", size_mb=1.0)
    assert again.snapshot().percent < 60  # expected ~0.7 s now, not the 0.5 s default

    failed = LoadProgress()
    failed.failed("Could not download the model 'x'.")
    assert i18n.loading("en", failed.snapshot()) == (
        "The model could not be loaded. Could not download the model 'x'.")


# The service while the model loads ------------------------------------------------------------
@pytest.fixture
def loading_service(tmp_path, tiny_model):
    """A ChatService over a LoadingEngine whose model is "loaded" when the test says so."""
    config_path = tmp_path / "config.yaml"
    config_path.write_text("temperature: 0\nrepetition_penalty: 1.0\nmax_new_tokens: 6\n",
                           encoding="utf-8")
    release, outcome = threading.Event(), {}

    def build(progress):
        progress.begin("load", size_mb=100.0)
        release.wait(60)
        if "error" in outcome:
            raise ModelLoadError(outcome["error"])
        return Engine(*tiny_model)

    store = Store(tmp_path / "chat.db")
    engine = LoadingEngine(build, name="tiny", max_batch=2)
    service = ChatService(store, engine, ConfigWatcher(config_path, load_config(config_path)))
    yield service, release, outcome
    release.set()
    store.close()


def stored(service, conversation_id):
    with sqlite3.connect(service.store.path) as conn:
        return [(r[0], r[1], r[2], r[3]) for r in conn.execute(
            "SELECT role, content, status, error FROM messages WHERE conversation_id = ? "
            "ORDER BY id", [conversation_id])]


def test_a_message_sent_while_loading_is_kept_and_answered_when_ready(loading_service):
    service, release, _ = loading_service
    assert service.loading().phase == "load"
    assert service.system()["precision"] == "…" and service.system()["kv_cache_mb"] == 0.0
    updates = service.send(OWNER, None, "Hello while loading")
    first = next(updates)
    assert first.loading is not None and first.loading.phase == "load"
    assert first.status == "streaming" and first.text == ""
    # The question is on disk already, before the model is ready.
    assert stored(service, first.conversation.id) == [
        ("user", "Hello while loading", "complete", None)]
    second = next(updates)
    assert second.loading is not None  # still waiting, still saying so

    release.set()
    rest = list(updates)
    assert rest[-1].status == "complete" and rest[-1].text and rest[-1].loading is None
    assert service.loading() is None and service.system()["precision"] == "fp32"
    assert [row[:3] for row in stored(service, first.conversation.id)] == [
        ("user", "Hello while loading", "complete"), ("assistant", rest[-1].text, "complete")]


def test_a_model_that_fails_to_load_gives_a_stored_error_reply(loading_service):
    service, release, outcome = loading_service
    updates = service.send(OWNER, None, "Anyone there?")
    first = next(updates)
    outcome["error"] = "Could not download the model 'Qwen/x' from http://mirror."
    release.set()
    final = list(updates)[-1]
    assert final.status == "error" and "Could not download" in final.error
    assert stored(service, first.conversation.id) == [
        ("user", "Anyone there?", "complete", None),
        ("assistant", "", "error", "Could not download the model 'Qwen/x' from http://mirror.")]
    assert service.loading().phase == "failed"


# Model sources ---------------------------------------------------------------------------------
def test_a_modelscope_id_without_the_package_says_how_to_install_it(tmp_path):
    if importlib.util.find_spec("modelscope") is not None:
        pytest.skip("modelscope is installed in this environment")
    result = run_app(tmp_path, {"model": "modelscope:Qwen/Qwen2.5-0.5B-Instruct",
                                "port": free_port()}, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "ModelScope model" in output and "-m pip install modelscope" in output, output
    assert "Traceback" not in output, output


def test_modelscope_model_is_named_without_its_prefix_in_the_api(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model: modelscope:Qwen/Qwen2.5-0.5B-Instruct\n", encoding="utf-8")
    assert load_config(path).model_id == "Qwen/Qwen2.5-0.5B-Instruct"


# The real app while it loads ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.browser
def test_the_page_shows_loading_progress_and_answers_a_question_asked_meanwhile(
        app_servers, gguf_path, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from tests.test_browser import CHROMIUM, SHOTS, _unavailable, open_app, send

    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} not found: install Debian's chromium to run browser tests")
    # An empty cache: the .gguf is converted (tens of seconds) while the page is already served.
    server = app_servers(model=gguf_path, ready=False,
                         env={"QWEN_CHAT_CACHE": str(tmp_path / "fresh-cache")})
    code, health = server.health()
    assert code == 503 and health["status"] == "loading", health
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = open_app(browser.new_context(viewport={"width": 1280, "height": 900}),
                            server.url)
            banner = page.locator("#model-status")
            expect(banner).to_be_visible(timeout=30_000)
            expect(banner).to_contain_text(re.compile(r"(Converting the model file|Loading model|"
                                                      r"Preparing the model).* \d+%"))
            expect(banner).to_contain_text("You can type now")
            page.screenshot(path=SHOTS / "loading-banner.png")
            # The percentage moves while the user watches.
            first = int(re.search(r"(\d+)%", banner.inner_text()).group(1))
            expect(banner).not_to_contain_text(f" {first}%", timeout=30_000)

            # A question asked now is shown at once, then answered when the model is ready.
            send(page, "What is the capital of France?")
            expect(page.locator('#chatbot [data-testid="user"]')).to_have_text(
                "What is the capital of France?", timeout=30_000)
            status = page.locator("#status")
            expect(status).to_contain_text(re.compile(r"\d+%"), timeout=30_000)
            expect(page.locator('#chatbot [data-testid="bot"]')).to_contain_text(
                "Paris", timeout=300_000)
            expect(banner).to_be_hidden(timeout=30_000)
            expect(status).to_contain_text("First token")
            page.screenshot(path=SHOTS / "loading-answered.png")
        finally:
            browser.close()
    code, health = server.health()
    assert code == 200 and health["status"] == "ok" and health["history_busy"] is False, health
    assert health["precision"] and health["threads"] >= 1, health  # what runs, as the System panel


@pytest.mark.slow
def test_a_hub_model_downloads_through_a_mirror_with_progress_then_starts_offline(
        app_servers, tiny_dir, tmp_path):
    """HF_ENDPOINT pointing at a mirror (hf-mirror.com for many users in China): the real
    download code fetches the model while the page is served and /health reports the download's
    percentage; a question sent meanwhile is answered; later starts need no network at all."""
    import gradio_client

    from tests.hub_mirror import HubMirror

    repo = "Qwen/Qwen2.5-0.5B-Instruct"
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": None, "HF_HUB_CACHE": None,
           "HUGGINGFACE_HUB_CACHE": None, "QWEN_CHAT_CACHE": str(tmp_path / "cache")}
    with HubMirror(tiny_dir, repo, bytes_per_s=30_000) as mirror:
        server = app_servers(model=repo, ready=False, env={**env, "HF_ENDPOINT": mirror.url},
                             extra_config={"max_new_tokens": 8})
        owner = "m" * 32
        job = gradio_client.Client(server.url, verbose=False).submit(
            owner, "", "Hello through the mirror", api_name="/chat")
        seen = []
        while True:
            code, health = server.health()
            seen.append(health)
            if code == 200 or health.get("status") == "error":
                break
            time.sleep(0.1)
        final = list(job)[-1]
    assert code == 200 and health["status"] == "ok", (seen, server.log_tail())
    assert health["disk_free_mb"] > 0, health  # the data folder's disk, for monitoring
    downloads = [h["percent"] for h in seen if h.get("phase") == "download"]
    assert downloads and all(0 <= p <= 100 for p in downloads), seen
    assert final["status"] == "complete" and final["new_tokens"] == 8, final
    # Every file came from the mirror: the repository's info, its file list, each file.
    assert f"GET /api/models/{repo}/revision/main" in mirror.requests
    fetched = {r.rsplit("/", 1)[-1] for r in mirror.requests if r.startswith("GET /" + repo)}
    assert fetched == set(mirror.files), mirror.requests
    assert "Downloading Qwen/Qwen2.5-0.5B-Instruct from http://127.0.0.1" in server.log_tail(200)

    # The mirror is gone: the next start loads from the local cache, with no network.
    server.restart(ready=True)
    again = gradio_client.Client(server.url, verbose=False).predict(
        owner, final["conversation_id"], "And again, offline", api_name="/chat")
    assert again["status"] == "complete", again


@pytest.mark.slow
def test_a_modelscope_model_downloads_with_the_optional_package_then_starts_offline(
        app_servers, tiny_dir, tmp_path):
    """`model: modelscope:<id>` with the `modelscope` package installed (pip, as the README
    says): the real package fetches the model from ModelScope's routes (a local stand-in, as
    modelscope.cn is unreachable here), the app answers, and later starts need no network."""
    import gradio_client

    from tests.hub_mirror import ModelScopeMirror
    from tests.models import modelscope_packages

    repo = "Qwen/Qwen2.5-0.5B-Instruct"
    env = {"PYTHONPATH": str(modelscope_packages()), "QWEN_CHAT_CACHE": str(tmp_path / "cache"),
           "MODELSCOPE_CACHE": str(tmp_path / "modelscope-home")}
    with ModelScopeMirror(tiny_dir, repo, bytes_per_s=60_000) as mirror:
        server = app_servers(model=f"modelscope:{repo}", extra_config={"max_new_tokens": 6},
                             env={**env, "MODELSCOPE_ENDPOINT": mirror.url})
        owner = "s" * 32
        final = gradio_client.Client(server.url, verbose=False).predict(
            owner, "", "Hello from ModelScope", api_name="/chat")
    assert final["status"] == "complete" and final["new_tokens"] == 6, final
    fetched = {r.split("FilePath=")[-1] for r in mirror.requests if "FilePath=" in r}
    assert fetched == set(mirror.files), mirror.requests
    assert list((tmp_path / "cache" / "modelscope").rglob("model.safetensors")), \
        "downloaded into the app's cache folder"
    assert "Downloading Qwen/Qwen2.5-0.5B-Instruct from ModelScope" in server.log_tail(200)
    with urllib.request.urlopen(server.url + "v1/models", timeout=10) as response:
        assert [m["id"] for m in json.load(response)["data"]] == [repo]

    server.restart(ready=True)  # ModelScope is gone: the cached download is used
    again = gradio_client.Client(server.url, verbose=False).predict(
        owner, final["conversation_id"], "Again, offline", api_name="/chat")
    assert again["status"] == "complete", again
