"""A real instruct model (SmolLM2-135M-Instruct, from a .gguf file) through the users' code path."""

from __future__ import annotations

import time

import pytest

from qwen_chat.engine import sources as loader
from qwen_chat.engine.local import Engine, Sampling

pytestmark = pytest.mark.slow


def test_capital_of_france_is_answered_with_paris(smollm):
    engine = Engine(*smollm)
    generation = engine.generate(
        [{"role": "user", "content": "What is the capital of France?"}],
        Sampling(temperature=0, max_new_tokens=40, repetition_penalty=1.0))
    answer = "".join(generation)
    assert "Paris" in answer
    assert generation.stats.new_tokens < 40  # it ended its turn by itself (end-of-turn token)


def test_gguf_conversion_is_cached_for_later_starts(gguf_path, model_cache, smollm):
    folder = loader.resolve_model(str(gguf_path), cache_dir=model_cache)
    assert (folder / "config.json").is_file()
    assert any(folder.glob("*.safetensors"))
    started = time.perf_counter()
    again = loader.resolve_model(str(gguf_path), cache_dir=model_cache)
    assert again == folder and time.perf_counter() - started < 1.0


def test_missing_local_model_says_what_to_fix(tmp_path):
    from qwen_chat.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="Model file not found: .*missing.gguf"):
        loader.resolve_model(str(tmp_path / "missing.gguf"), cache_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="Model folder not found"):
        loader.resolve_model(str(tmp_path / "no-such-folder"), cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        loader.resolve_model(str(tmp_path / "empty"), cache_dir=tmp_path)
