"""config.yaml: defaults, one clear message per invalid case, and hot reload."""

from __future__ import annotations

import os
import time

import pytest

from qwen_chat.config import Config, ConfigWatcher, load_config, parse_config
from qwen_chat.errors import ConfigError


def write(path, text):
    path.write_text(text, encoding="utf-8")
    # Make every write visible to the watcher even within one mtime tick.
    stamp = time.time_ns() + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


def test_missing_file_is_written_with_commented_defaults(tmp_path):
    path = tmp_path / "config.yaml"
    config = load_config(path)
    text = path.read_text(encoding="utf-8")
    assert config == Config()
    assert config.model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert (config.temperature, config.max_new_tokens, config.enable_history) == (0.7, 512, True)
    assert (config.host, config.port, config.threads) == ("127.0.0.1", 8080, "auto")
    # Every key is present and commented in English and Chinese.
    for key in ("model", "temperature", "top_p", "max_new_tokens", "repetition_penalty",
                "enable_history", "system_prompt", "host", "port", "open_browser", "data_dir",
                "threads", "kv_cache_mb", "precision", "allow_remote_images"):
        assert f"\n{key}:" in text
    assert "# Randomness of replies" in text and "随机" in text


def test_relative_paths_resolve_next_to_the_config_file(tmp_path, monkeypatch):
    monkeypatch.delenv("QWEN_CHAT_DATA", raising=False)
    path = tmp_path / "config.yaml"
    write(path, "data_dir: my-data\n")
    assert load_config(path).data_path == tmp_path / "my-data"
    monkeypatch.setenv("QWEN_CHAT_DATA", str(tmp_path / "elsewhere"))
    assert load_config(path).data_path == tmp_path / "elsewhere"


def test_whole_numbers_are_accepted_for_decimal_keys():
    config = parse_config("temperature: 1\ntop_p: 1\nrepetition_penalty: 1\nthreads: 3\n")
    assert config.temperature == 1.0 and isinstance(config.temperature, float)
    assert config.thread_count == 3


@pytest.mark.parametrize("text, expected", [
    ("temperature: 5", ["temperature = 5", "a number from 0 to 2"]),
    ("temperature: hot", ["temperature = 'hot'", "a number from 0 to 2"]),
    ("top_p: 0", ["top_p = 0", "from 0.01 to 1"]),
    ("max_new_tokens: 1.5", ["max_new_tokens = 1.5", "a whole number from 1 to 8192"]),
    ("max_new_tokens: 0", ["max_new_tokens = 0", "from 1 to 8192"]),
    ("repetition_penalty: 0.5", ["repetition_penalty = 0.5", "from 1.0 to 2.0"]),
    ("enable_history: maybe", ["enable_history = 'maybe'", "true or false"]),
    ("enable_history: 1", ["enable_history = 1", "true or false"]),
    ("port: true", ["port = True", "from 1 to 65535"]),
    ("port: 70000", ["port = 70000", "from 1 to 65535"]),
    ("threads: many", ["threads = 'many'", "auto or a whole number"]),
    ("threads: 0", ["threads = 0", "auto or a whole number"]),
    ("kv_cache_mb: -1", ["kv_cache_mb = -1", "from 0 (off) to 65536"]),
    ("precision: int2", ["precision = 'int2'", "auto, int8, int4, fp32 or bf16"]),
    ("model: ''", ["model = ''", "a Hub id, modelscope:<id>, a local folder or a .gguf file"]),
    ("system_prompt: [a, b]", ["system_prompt = ['a', 'b']", "text"]),
    ("host:", ["host = (empty)", "an address"]),
])
def test_invalid_values_name_the_key_the_value_and_what_is_allowed(text, expected):
    with pytest.raises(ConfigError) as err:
        parse_config(text + "\n", source="config.yaml")
    message = str(err.value)
    assert message.startswith("config.yaml: ")
    for part in expected:
        assert part in message
    assert "\n" not in message


def test_unknown_key_suggests_the_closest_one():
    with pytest.raises(ConfigError) as err:
        parse_config("temprature: 0.5\n", source="config.yaml")
    assert "unknown key 'temprature'" in str(err.value)
    assert "Did you mean 'temperature'?" in str(err.value)


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(ConfigError) as err:
        parse_config("temperature: 0.7\nport: 8080\nmodel: [unclosed\n", source="config.yaml")
    assert "config.yaml line 4: invalid YAML" in str(err.value)


def test_a_file_that_is_not_key_value_pairs_is_refused():
    with pytest.raises(ConfigError, match="expected 'key: value' lines"):
        parse_config("- just\n- a list\n")


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().temperature = 1.0  # type: ignore[misc]


def test_saved_change_applies_without_restart(tmp_path):
    path = tmp_path / "config.yaml"
    write(path, "temperature: 0.7\nenable_history: true\n")
    watcher = ConfigWatcher(path, load_config(path))
    assert watcher.current().temperature == 0.7
    write(path, "temperature: 0.2\nenable_history: false\nsystem_prompt: Answer briefly.\n")
    current = watcher.current()
    assert (current.temperature, current.enable_history) == (0.2, False)
    assert current.system_prompt == "Answer briefly."
    assert watcher.error is None and watcher.restart_needed == ()


def test_invalid_edit_keeps_the_last_good_settings_and_reports(tmp_path):
    path = tmp_path / "config.yaml"
    write(path, "temperature: 0.3\n")
    watcher = ConfigWatcher(path, load_config(path))
    write(path, "temperature: 9\n")
    assert watcher.current().temperature == 0.3
    assert "temperature = 9" in watcher.error
    write(path, "temperature: 0.4\n")
    assert watcher.current().temperature == 0.4
    assert watcher.error is None


def test_start_up_keys_say_a_restart_is_needed(tmp_path):
    path = tmp_path / "config.yaml"
    write(path, "port: 8080\nmodel: Qwen/Qwen2.5-0.5B-Instruct\n")
    watcher = ConfigWatcher(path, load_config(path))
    write(path, "port: 9090\nmodel: other/model\ntemperature: 0.1\n")
    current = watcher.current()
    assert current.temperature == 0.1
    assert (current.port, current.model) == (8080, "Qwen/Qwen2.5-0.5B-Instruct")
    assert set(watcher.restart_needed) == {"port", "model"}


def test_a_snapshot_is_one_frozen_reading_versioned_per_save(tmp_path):
    path = tmp_path / "config.yaml"
    write(path, "temperature: 0.3\n")
    watcher = ConfigWatcher(path, load_config(path))
    first = watcher.snapshot()
    assert (first.version, first.error, first.config.temperature) == (0, None, 0.3)
    assert watcher.snapshot() is first  # nothing saved: the same reading
    write(path, "temperature: 9\n")
    refused = watcher.snapshot()
    assert (refused.version, refused.config.temperature) == (1, 0.3)
    assert "temperature = 9" in refused.error
    assert (first.version, first.error) == (0, None)  # a reading never changes afterwards
    write(path, "temperature: 0.4\nport: 9\n")
    fixed = watcher.snapshot()
    assert (fixed.version, fixed.error, fixed.restart_needed) == (2, None, ("port",))
    assert fixed.config.temperature == 0.4 and fixed.config.port == 8080



def test_the_shipped_config_yaml_is_valid():
    from pathlib import Path

    shipped = Path(__file__).resolve().parent.parent / "config.yaml"
    assert isinstance(load_config(shipped), Config)
