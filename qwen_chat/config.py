"""config.yaml: read, check and hot-reload into one typed, frozen `Config`.

Every check happens here, at the edge, so the rest of the app can trust its settings. A bad value
raises `ConfigError` with one message naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .config_template import DEFAULT_CONFIG_TEXT, DEFAULT_MODEL, DEFAULT_SYSTEM_PROMPT
from .errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "int8", "int4")  # see engine/precision.py

# Keys read only at start-up: changing them in a running app needs a restart.
RESTART_KEYS = ("model", "engine", "base_url", "api_key", "host", "port", "username", "password",
                "server_api_key", "queue_size", "max_batch", "data_dir", "threads", "kv_cache_mb",
                "precision")
# Keys a conversation may set for itself, over config.yaml's (context.chat_config).
CHAT_KEYS = ("temperature", "top_p", "max_new_tokens", "repetition_penalty", "enable_history",
             "max_input_tokens", "system_prompt")


@dataclass(frozen=True)
class Config:
    model: str = DEFAULT_MODEL
    engine: str = "local"
    base_url: str = ""
    api_key: str = ""
    temperature: float = 0.7
    top_p: float = 0.8
    max_new_tokens: int = 512
    repetition_penalty: float = 1.05
    enable_history: bool = True
    max_input_tokens: int = 4096
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    host: str = "127.0.0.1"
    port: int = 8080
    username: str = ""
    password: str = ""
    server_api_key: str = ""
    queue_size: int = 32
    max_batch: int = 4
    open_browser: bool = True
    allow_remote_images: bool = False
    data_dir: str = "data"
    threads: int | str = "auto"
    kv_cache_mb: int = 256
    precision: str = "auto"
    # Where the file lives: relative paths (data_dir, a local model) are resolved against it.
    base_dir: Path = field(default=Path("."), compare=False)

    @property
    def data_path(self) -> Path:
        """The data folder; the QWEN_CHAT_DATA environment variable overrides config.yaml."""
        override = os.environ.get("QWEN_CHAT_DATA")
        path = Path(override) if override else Path(self.data_dir).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def credentials(self) -> tuple[str, str] | None:
        """(username, password) for sign-in, environment first; None when either is missing."""
        user = os.environ.get("QWEN_CHAT_USERNAME") or self.username
        password = os.environ.get("QWEN_CHAT_PASSWORD") or self.password
        return (user, password) if user.strip() and password else None

    @property
    def openai_key(self) -> str:
        """The /v1 API key, environment first ("" = none)."""
        return os.environ.get("QWEN_CHAT_API_KEY") or self.server_api_key

    @property
    def model_id(self) -> str:
        """The model's name in the /v1 API: the Hub id, or a local folder's or file's name."""
        if self.model.startswith("modelscope:"):
            return self.model[len("modelscope:"):].strip("/")
        path = Path(self.model).expanduser()
        local = path if path.is_absolute() else self.base_dir / path
        return local.name if local.exists() else self.model

    @property
    def local_only(self) -> bool:
        """True when host accepts connections from this computer only (a loopback address)."""
        host = self.host.strip().strip("[]").lower()
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def model_source(self) -> str:
        """The model as given, with a relative local path resolved against config.yaml's folder."""
        candidate = Path(self.model).expanduser()
        if not candidate.is_absolute() and (self.base_dir / candidate).exists():
            return str((self.base_dir / candidate).resolve())
        return str(candidate) if candidate.is_absolute() else self.model

    @property
    def thread_count(self) -> int:
        if self.threads == "auto":
            return physical_cores()
        return int(self.threads)


def physical_cores() -> int:
    """Physical cores: hyper-threads share one core's matmul units, so more threads only contend."""
    try:
        import psutil

        count = psutil.cpu_count(logical=False)
    except ImportError:
        count = None
    return max(1, count or os.cpu_count() or 1)


# key -> (allowed type(s), description of what is allowed, range check)
def _in(lo: float, hi: float):
    return lambda v: lo <= v <= hi


_RULES: dict[str, tuple[tuple[type, ...], str, Any]] = {
    "model": ((str,), "a Hub id, modelscope:<id>, a local folder or a .gguf file", lambda v: bool(v.strip())),
    "engine": ((str,), "local or openai", lambda v: v in ("local", "openai")),
    "base_url": ((str,), "an address such as http://127.0.0.1:8000/v1, or \"\"",
                 lambda v: v == "" or v.startswith(("http://", "https://"))),
    "api_key": ((str,), "the remote server's key in quotes, or \"\" for none", None),
    "temperature": ((int, float), "a number from 0 to 2", _in(0, 2)),
    "top_p": ((int, float), "a number from 0.01 to 1", _in(0.01, 1)),
    "max_new_tokens": ((int,), "a whole number from 1 to 8192", _in(1, 8192)),
    "repetition_penalty": ((int, float), "a number from 1.0 to 2.0", _in(1.0, 2.0)),
    "enable_history": ((bool,), "true or false", None),
    "max_input_tokens": ((int,), "a whole number from 256 to 32768", _in(256, 32768)),
    "system_prompt": ((str,), "text (may be empty)", None),
    "host": ((str,), "an address such as 127.0.0.1 or 0.0.0.0", lambda v: bool(v.strip())),
    "port": ((int,), "a whole number from 1 to 65535", _in(1, 65535)),
    "username": ((str,), "a name, or \"\" for none", None),
    "password": ((str,), "a password of at least 8 characters in quotes, or \"\" for none",
                 lambda v: v == "" or len(v) >= 8),
    "server_api_key": ((str,), "a key of at least 8 characters in quotes, or \"\" for none",
                       lambda v: v == "" or len(v) >= 8),
    "queue_size": ((int,), "a whole number from 1 to 1000", _in(1, 1000)),
    "max_batch": ((int,), "a whole number from 1 to 16", _in(1, 16)),
    "open_browser": ((bool,), "true or false", None),
    "allow_remote_images": ((bool,), "true or false", None),
    "data_dir": ((str,), "a folder path", lambda v: bool(v.strip())),
    "threads": ((int, str), "auto or a whole number from 1 to 256",
                lambda v: v == "auto" if isinstance(v, str) else 1 <= v <= 256),
    "kv_cache_mb": ((int,), "a whole number of megabytes from 0 (off) to 65536", _in(0, 65536)),
    "precision": ((str,), "auto, int8, int4, fp32 or bf16", lambda v: v in PRECISIONS),
}


def _check(key: str, value: Any, source: str) -> Any:
    types, allowed, check = _RULES[key]
    # bool is a subclass of int in Python: `port: true` must not pass as 1.
    type_ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if isinstance(value, str) and "\x00" in value:
        raise ConfigError(f"{source}: {key} contains a NUL character (\\0); remove it.")
    if not type_ok or (check is not None and not check(value)):
        shown = "(empty)" if value is None else repr(value) if isinstance(value, str) else value
        raise ConfigError(f"{source}: {key} = {shown} is not allowed; use {allowed}.")
    if float in types and isinstance(value, int):
        value = float(value)
    return value


def parse_config(text: str, *, source: str = "config.yaml", base_dir: Path = Path(".")) -> Config:
    """Parse and check config.yaml's text; raise ConfigError with one actionable message."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}{where}: invalid YAML ({problem}). Check the indentation "
                          "and quotes on that line, or delete the file to get the defaults back."
                          ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected 'key: value' lines, found {type(data).__name__}.")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _RULES:
            close = difflib.get_close_matches(str(key), _RULES, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{source}: unknown key '{key}'.{hint} "
                              f"Allowed keys: {', '.join(_RULES)}.")
        values[key] = _check(key, value, source)
    if values.get("engine") == "openai" and not values.get("base_url"):
        raise ConfigError(f"{source}: engine = openai needs base_url, the server's address "
                          "(e.g. base_url: http://127.0.0.1:8000/v1).")
    return Config(**values, base_dir=base_dir)


def override(config: Config, values: Mapping[str, Any], *, source: str) -> Config:
    """`config` with some of CHAT_KEYS replaced by `values`, each checked as in config.yaml."""
    for key in values:
        if key not in CHAT_KEYS:
            raise ConfigError(f"{source}: '{key}' cannot be set here; "
                              f"allowed: {', '.join(CHAT_KEYS)}.")
    return dataclasses.replace(config, **{k: _check(k, v, source) for k, v in values.items()})


def load_config(path: Path) -> Config:
    """Read config.yaml, writing the commented defaults first when it does not exist."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(DEFAULT_CONFIG_TEXT, encoding="utf-8")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}).") from None
    return parse_config(text, source=str(path), base_dir=path.resolve().parent)


@dataclass(frozen=True)
class ConfigSnapshot:
    """config.yaml as read for one message: the settings every step of that message uses, and
    what was wrong with the last save (each page tells its user once per `version`)."""
    config: Config
    version: int = 0  # goes up each time a saved change is read
    error: str | None = None  # the last save was refused (`config` is the last good one)
    restart_needed: tuple[str, ...] = ()  # saved start-up keys that wait for a restart


class ConfigWatcher:
    """Hands out the current settings, re-reading config.yaml when it changed on disk.

    Read once per message (ChatService.config), so a saved edit applies to the next message
    without a restart and never to half of one. An invalid edit keeps the last good settings
    and reports the error; keys that only apply at start-up keep their start-up values and are
    reported as needing a restart.
    """

    def __init__(self, path: Path, initial: Config):
        self.path = Path(path)
        self._startup = initial
        self._lock = threading.Lock()
        self._snapshot = ConfigSnapshot(initial)
        self._stamp = self._read_stamp()

    def _read_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def snapshot(self) -> ConfigSnapshot:
        """The settings now (re-read if the file was saved since), with its problems."""
        with self._lock:
            stamp = self._read_stamp()
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                self._snapshot = self._reload(self._snapshot)
            return self._snapshot

    def current(self) -> Config:
        return self.snapshot().config

    @property
    def error(self) -> str | None:
        return self._snapshot.error

    @property
    def restart_needed(self) -> tuple[str, ...]:
        return self._snapshot.restart_needed

    def _reload(self, last: ConfigSnapshot) -> ConfigSnapshot:
        version = last.version + 1
        try:
            fresh = load_config(self.path)
        except ConfigError as exc:
            log.warning("config.yaml was not applied: %s", exc)  # the terminal's copy
            return ConfigSnapshot(last.config, version, str(exc), last.restart_needed)
        restart = tuple(k for k in RESTART_KEYS if getattr(fresh, k) != getattr(self._startup, k))
        if restart:
            log.warning("Saved config.yaml: restart the app to apply %s.", ", ".join(restart))
        keep = {k: getattr(self._startup, k) for k in RESTART_KEYS}
        return ConfigSnapshot(dataclasses.replace(fresh, **keep), version, None, restart)
