"""How many threads the model computes with: the cores other programs leave free, re-measured
while it runs.

A user's computer is never idle (a browser, a video call, a scan). A matmul split over a thread
pool sized to every core waits at each barrier for its slowest thread, and a thread that shares
its core with a busy program is slow: with one busy process on a 2-core machine, 2 model threads
decoded at 166-197 ms/token and 1 thread at 81-85 (Intel Xeon, AVX-512 + AMX, int8; quiet, 2
threads: 52-61). So the pool follows the cores actually free:

* every `WINDOW` seconds (while the model runs, and while it idles) the governor reads the CPU time of the whole machine and of this process
  (psutil, i.e. /proc/stat on Linux; the same call works on Windows and macOS) and takes the
  difference as what other programs used, in cores;
* the model gets the cores that remain (rounded; at least 1, at most `max_threads`). Fewer is
  applied at once (a stalled pool costs 2-3x per step); more only after two windows in a row
  agree, so a short burst elsewhere does not make the pool flap.

`torch.set_num_threads` is called in the thread that runs the model (the engine's scheduler), the
one whose OpenMP pool it sizes. Our own threads (web server, tokenizer) count as ours, not as
other programs'.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import psutil

log = logging.getLogger(__name__)

WINDOW = 0.25  # seconds between two measurements (a decode step is 20-80 ms)


def busy_cores() -> float:
    """CPU seconds the cores this process may run on have spent busy so far, all together
    (only those cores: a program busy on a core we cannot use does not slow us)."""
    per_cpu = psutil.cpu_times(percpu=True)
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(len(per_cpu))
    return sum(sum(t) - t.idle - getattr(t, "iowait", 0.0)
               for i, t in enumerate(per_cpu) if i in allowed)


def own_cores(process: psutil.Process) -> float:
    """CPU seconds this process has used so far (all its threads)."""
    t = process.cpu_times()
    return t.user + t.system


class ThreadGovernor:
    """Picks the model's thread count before each forward pass (`before_pass`). With
    `adaptive=False` the count stays at `max_threads` (config.yaml's `threads:` set to a number)."""

    def __init__(self, max_threads: int, *, adaptive: bool = True,
                 set_threads: Callable[[int], None] | None = None,
                 machine: Callable[[], float] = busy_cores,
                 own: Callable[[], float] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        import torch  # the engine's process only: this module is imported by local.py

        self.max_threads = max(1, max_threads)
        self.adaptive = adaptive
        self._set = set_threads or torch.set_num_threads
        self._machine = machine
        process = psutil.Process()
        self._own = own or (lambda: own_cores(process))
        self._clock = clock
        self.threads = 0  # applied on the first pass
        self.others = 0.0  # cores other programs used in the last window
        self.changes = 0  # how often the count changed (for the System panel and tests)
        self._last = (clock(), machine(), self._own())
        self._up_votes = 0

    @property
    def idle_wait(self) -> float | None:
        """How long the model's thread may sleep while idle before sampling again."""
        return WINDOW if self.adaptive and self.max_threads > 1 else None

    def before_pass(self) -> int:
        """Call before each forward pass, in the thread that runs it. Returns the thread count."""
        if self.threads == 0:
            self._apply(self.max_threads)
        self.sample()
        return self.threads

    def sample(self) -> None:
        """Measure what other programs used since the last window and resize the pool; call it
        from the thread that runs the model, also while it idles (every WINDOW seconds), so
        that the first pass after a pause already knows the load."""
        if not self.adaptive or self.max_threads == 1:
            return
        now = self._clock()
        if now - self._last[0] >= WINDOW:
            machine, own = self._machine(), self._own()
            wall = now - self._last[0]
            self.others = max(0.0, (machine - self._last[1]) - (own - self._last[2])) / wall
            self._last = (now, machine, own)
            self._decide(self.target(self.others))

    def target(self, others: float) -> int:
        """The threads for the cores that `others` (cores used elsewhere) leave free."""
        return max(1, min(self.max_threads, round(self.max_threads - others)))

    def _decide(self, target: int) -> None:
        if target < self.threads or self.threads == 0:
            self._up_votes = 0
            self._apply(target)
        elif target > self.threads:
            self._up_votes += 1
            if self._up_votes >= 2:
                self._up_votes = 0
                self._apply(target)
        else:
            self._up_votes = 0

    def _apply(self, n: int) -> None:
        if n != self.threads:
            if self.threads:
                log.debug("Model threads %d -> %d (other programs used %.2f cores)",
                          self.threads, n, self.others)
            self.changes += self.threads != 0
            self._set(n)
            self.threads = n
