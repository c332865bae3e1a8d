"""Shared fixtures: the offline test models, built once per cache (see tests/models.py).

Every test that starts the app in a subprocess (`app_servers`) or loads the real small model
(`smollm`, `gguf_path`) is marked slow here, so `./start.sh --test -m "not slow"` is the quick
subset; the plain test command still runs everything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.models import cache_root, smollm_gguf, tiny_qwen_dir

REPO = Path(__file__).resolve().parent.parent
SLOW_FIXTURES = {"app_servers", "smollm", "gguf_path"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return tiny_qwen_dir()


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    from qwen_chat.engine import sources as loader

    return loader.load(str(tiny_dir), cache_dir=cache_root() / "converted")


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    return smollm_gguf()


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """Where the app caches a .gguf conversion: shared by every test and server subprocess."""
    path = cache_root() / "converted"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["QWEN_CHAT_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def smollm(gguf_path, model_cache):
    """SmolLM2-135M-Instruct loaded through the same path a user's `model: x.gguf` takes."""
    from qwen_chat.engine import sources as loader

    return loader.load(str(gguf_path), cache_dir=model_cache)
