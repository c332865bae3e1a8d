"""The model loads in the background while the page is already served, with visible progress.

`LoadProgress` says what loading does now (download, one-off conversion or quantization, load)
and how far it is: downloads report real bytes; the other phases report the time spent against
the time the same phase took at the last start (remembered in the cache folder, with modest
defaults on a first start), capped below 100% until the phase ends.

`LoadingEngine` stands in for the engine until the model is ready: the page, the terminal and the
API can be used at once, and a message sent meanwhile is answered as soon as the model is ready.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ModelLoadError, ModelNotLoaded

log = logging.getLogger(__name__)

# Seconds per MB of input when no earlier start measured the phase (this 2-core machine's
# figures, rounded up: a percentage that moves a little slow is better than one stuck at 95%).
DEFAULT_SECONDS_PER_MB = {"convert": 0.3, "quantize": 0.02, "load": 0.01,
                          "calibrate": 10.0}  # calibrate: seconds per model (size 1)
CAP = 0.95  # an estimated phase never shows more than this before it really ends


@dataclass(frozen=True)
class Snapshot:
    """One reading of the progress: phase, fraction done (None if unknown), bytes, error."""
    phase: str  # "start", "download", "convert", "calibrate", "quantize", "load", "ready", "failed"
    fraction: float | None = None
    done_mb: float = 0.0
    total_mb: float | None = None
    error: str | None = None

    @property
    def percent(self) -> int | None:
        return None if self.fraction is None else int(100 * self.fraction)


class LoadProgress:
    """Thread-safe progress of one model load; the loader writes it, the page reads it."""

    def __init__(self, timings: Path | None = None):
        self._lock = threading.Lock()
        self._timings = timings
        self._phase, self._started, self._size_mb = "start", time.monotonic(), 0.0
        self._done = 0.0
        self._total: float | None = None
        self._error: str | None = None
        self._expected: float | None = None

    # Written by the loader -------------------------------------------------------------------
    def begin(self, phase: str, *, size_mb: float = 0.0, total_mb: float | None = None,
              instead: bool = False) -> None:
        """Start `phase`: a download of total_mb (None: unknown), or work on size_mb of input.
        `instead`: the phase under way turned out to be this one (its time is not a measure)."""
        if not instead:
            self._finish_phase()
        with self._lock:
            self._phase, self._started, self._size_mb = phase, time.monotonic(), size_mb
            self._done, self._total = 0.0, total_mb
            rate = self._rates().get(phase, DEFAULT_SECONDS_PER_MB.get(phase))
            self._expected = max(0.5, size_mb * rate) if rate is not None and size_mb else None
        log.info("Model: %s%s", phase, f" ({size_mb:,.0f} MB)" if size_mb else "")

    def downloaded(self, done_mb: float, total_mb: float | None = None) -> None:
        with self._lock:
            self._done = done_mb
            if total_mb is not None:
                self._total = total_mb

    def ready(self) -> None:
        self._finish_phase()
        with self._lock:
            self._phase = "ready"

    def failed(self, error: str) -> None:
        with self._lock:
            self._phase, self._error = "failed", error

    # Read by the page ------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self._lock:
            phase = self._phase
            if phase in ("ready", "failed"):
                return Snapshot(phase, 1.0 if phase == "ready" else None, error=self._error)
            if phase == "download":
                fraction = (min(1.0, self._done / self._total)
                            if self._total else None)
                return Snapshot(phase, fraction, self._done, self._total)
            fraction = None
            if self._expected:
                fraction = min(CAP, (time.monotonic() - self._started) / self._expected)
            return Snapshot(phase, fraction)

    # Measured rates, kept for the next start ---------------------------------------------------
    def _rates(self) -> dict[str, float]:
        if self._timings is None:
            return {}
        try:
            rates = json.loads(self._timings.read_text(encoding="utf-8"))
            return {k: float(v) for k, v in rates.items() if isinstance(v, (int, float))}
        except (OSError, ValueError, AttributeError):
            return {}

    def _finish_phase(self) -> None:
        """Remember how long the phase that just ended took per MB, for the next estimate."""
        with self._lock:
            phase, size, spent = self._phase, self._size_mb, time.monotonic() - self._started
        if self._timings is None or phase not in DEFAULT_SECONDS_PER_MB or size <= 0:
            return
        rates = self._rates()
        rates[phase] = spent / size
        try:
            self._timings.parent.mkdir(parents=True, exist_ok=True)
            self._timings.write_text(json.dumps(rates), encoding="utf-8")
        except OSError:
            pass  # a read-only cache only makes the next estimate rougher


class LoadingEngine:
    """The engine's stand-in while the model loads in a background thread, then the engine.

    `build(progress)` returns the real engine. Until it has, `ready` is False, `progress` tells
    how far loading is, and `wait()` blocks; afterwards every call goes to the real engine.
    """

    def __init__(self, build: Callable[[LoadProgress], object], *, name: str, max_batch: int,
                 progress: LoadProgress | None = None):
        self.name, self.max_batch = name, max_batch
        self.progress = progress or LoadProgress()
        self._engine = None
        self._done = threading.Event()
        threading.Thread(target=self._load, args=(build,), daemon=True,
                         name="qwen-chat-load").start()

    def _load(self, build) -> None:
        try:
            self._engine = build(self.progress)
            self.progress.ready()
        except Exception as exc:  # noqa: BLE001 - every failure is shown to the user as it is
            self.progress.failed(str(exc) or type(exc).__name__)
            if not isinstance(exc, ModelLoadError):  # not one of ours: keep the trace in the log
                log.error("Model load failed", exc_info=exc)
        finally:
            self._done.set()

    @property
    def ready(self) -> bool:
        return self._engine is not None

    @property
    def error(self) -> str | None:
        return self.progress.snapshot().error

    def wait(self, timeout: float | None = None):
        """The real engine once loaded; None if still loading after `timeout` seconds.
        Raises ModelNotLoaded when loading failed."""
        self._done.wait(timeout)
        if self._engine is None and self._done.is_set():
            raise ModelNotLoaded(self.error or "The model could not be loaded.")
        return self._engine

    # The engine's surface. Before the model is ready: what is known, or wait for it ----------
    @property
    def precision(self) -> str:
        return self._engine.precision if self._engine is not None else "…"

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.wait(timeout) is not None

    @property
    def threads(self) -> int:
        return self._engine.threads if self._engine is not None else 0

    @property
    def waiting(self) -> int:
        return self._engine.waiting if self._engine is not None else 0

    @property
    def kv_bytes(self) -> int:
        return self._engine.kv_bytes if self._engine is not None else 0

    @property
    def context_length(self) -> int:
        return self.wait().context_length

    def count_tokens(self, messages, tools=None) -> int:
        return self.wait().count_tokens(messages, tools)

    def token_bytes(self, ids: list[int]) -> list[bytes]:
        return self.wait().token_bytes(ids)

    @property
    def constrained(self) -> bool:
        return bool(getattr(self.wait(), "constrained", False))

    def generate(self, *args, **kwargs):
        return self.wait().generate(*args, **kwargs)

    def warm(self, messages) -> None:
        self.wait().warm(messages)

    def forget(self, cache_key: str) -> None:
        if self._engine is not None:
            self._engine.forget(cache_key)

    def prepare(self, messages, cache_key: str) -> threading.Event:
        if self._engine is not None:
            return self._engine.prepare(messages, cache_key)
        done = threading.Event()  # nothing to prefill into yet: the reply will prefill it all
        done.set()
        return done

    def adopt(self, draft_key: str, cache_key: str) -> None:
        if self._engine is not None:
            self._engine.adopt(draft_key, cache_key)

    def stop_all(self, timeout: float = 5.0) -> None:
        if self._engine is not None:
            self._engine.stop_all(timeout)
