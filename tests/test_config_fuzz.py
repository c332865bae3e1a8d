"""Config fuzzing (hypothesis): whatever config.yaml holds, the app starts or says in one line why
not; it never shows a traceback.

In-process, thousands of random files go through load_config: a Config or a one-line
ConfigError, nothing else. Then a few dozen random files go through the real `app.py` in a
subprocess: it starts (and is stopped) or exits with one `Error:` line.
"""

from __future__ import annotations

import string
import time

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qwen_chat.config import _RULES, Config, load_config
from qwen_chat.errors import ConfigError
from tests import prestarted
from tests.server import app_env, free_port

KEYS = st.sampled_from(sorted(_RULES) + ["modle", "Port", "", "threads ", "日本語"])
SCALARS = (st.none() | st.booleans() | st.integers(-10**12, 10**12)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
           | st.sampled_from(["auto", "int8", "0.0.0.0", "127.0.0.1", "localhost", "::1", "data",
                              "../x", "/proc/self", "\x00", "~", "Qwen/Qwen2.5-0.5B-Instruct"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=5)
MAPPINGS = st.dictionaries(KEYS, VALUES, max_size=8)
RAW = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


def texts():
    """A config.yaml's text: random keys and values as YAML, or any text at all."""
    as_yaml = MAPPINGS.map(lambda d: yaml.safe_dump(d, allow_unicode=True))
    return as_yaml | RAW | st.sampled_from(["", "---", "- a\n- b", "port: [", "\ufeffport: 1",
                                            "temperature: .nan", "port: 0x1F90"])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts())
def test_any_config_text_gives_a_config_or_a_one_line_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        config = load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message
        assert str(path) in message  # it names the file (and, from there, the key or line)
    else:
        assert isinstance(config, Config)


START = {"model", "host", "port", "data_dir", "threads", "precision", "kv_cache_mb",
         "username", "password", "server_api_key", "queue_size", "max_batch", "max_input_tokens",
         "system_prompt"}
START_VALUES = (SCALARS | st.text(alphabet=string.printable, max_size=20)
                | st.integers(0, 70000))


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@example(values={"data_dir": "/proc/self/nope"})  # found by this test: used to end in a traceback
@example(values={"data_dir": "a\x00b"})
@example(values={"host": "\x00"})
@example(values={"host": "256.1.1.1", "username": "a", "password": "12345678"})
@example(values={"model": "/etc/passwd"})
@example(values={"threads": 1, "precision": "fp32", "kv_cache_mb": 0})  # one that starts
@given(values=st.dictionaries(st.sampled_from(sorted(START)), START_VALUES, max_size=5))
def test_the_app_starts_or_exits_with_one_line(tmp_path_factory, tiny_dir, values):
    folder = tmp_path_factory.mktemp("app")
    config = {"model": str(tiny_dir), "port": free_port(), "open_browser": False,
              "data_dir": str(folder / "data"), **values}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    # The app's own process, forked ready-imported (tests/prestarted.py), output to a file.
    out = folder / "app.log"
    proc = prestarted.Child(["--config", str(path), "--no-browser"], app_env(), out)
    deadline = time.monotonic() + 120
    started = False
    try:
        while proc.poll() is None and time.monotonic() < deadline:  # until it runs or exits
            if "Qwen Chat is running" in out.read_text(encoding="utf-8", errors="replace"):
                started = True
                break
            time.sleep(0.05)
        if started:
            proc.terminate()
        proc.wait(60)
    finally:
        proc.kill()
    lines = out.read_text(encoding="utf-8", errors="replace").splitlines()
    log = "\n".join(lines)
    assert "Traceback" not in log, (values, log)
    if not started:
        assert proc.returncode not in (0, None), (values, log)
        errors = [ln for ln in lines if ln.startswith("Error:")]
        assert len(errors) == 1, (values, log)
