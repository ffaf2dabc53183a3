"""How many Runs compute at once in one process, and in how much memory.

The app is one process shared by its users. Each Run is capped on its own
(``FIELDFLOW_MAX_PIXEL_DATES``, about 15 GB at the default), but nothing capped them together:
two users' large Runs at once on a 24 GB server took more memory than it had, and the kernel
then kills the whole process, every user's Run and page with it. And each Run's reconstruction
uses every core, so Runs beyond the machine's cores only slow each other down.

A :class:`RunGate` admits a Run's reconstruction (the part that takes the memory and the
cores; the fetch before it waits on the network) when fewer than ``most_runs`` run and its
estimated memory fits beside theirs, first come first served. A Run that would not fit even
alone runs alone. Those waiting report how many Runs are ahead of them, and a waiting Run that
is stopped leaves the queue at once.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from core.progress import beat

WAITING_FOR_RUNS = "waiting for the Runs ahead of this one on this server"
"""The stage a Run reports while it waits; its count is the Runs ahead that have ended, of
those ahead when it began to wait."""

RUN_FIXED_BYTES = 1_500_000_000
RUN_BYTES_PER_PIXEL = 30_000
RUN_BYTES_PER_PIXEL_DATE = 60
"""A Run's own peak memory, above the process's (Python, torch and the model, about 0.7 GB,
shared by its Runs): a fixed part, a part per pixel of its field's grid (the reconstruction
works through the period's days in chunks of at most 40, so its days add little) and one per
pixel-date of its cube (the cube itself). Fitted to three Runs with the app's settings:
about 2.0 GB for 117 x 117 px over 30 dates (``benchmarks/runs_at_once.txt``, one Run at a
time), 3.9 GB for 244 x 244 px over 118 (``season_run_256_app.txt``), 9.8 GB for
486 x 486 px over 118 (README, "Benchmarks"); the fit gives 1.9, 3.7 and 10.3 GB."""

MEMORY_SHARE = 0.75
"""The share of the machine's memory its Runs may take together by default; the rest is the
process's own, the kept results' (``FIELDFLOW_RESULT_CACHE_MB``) and the system's."""

WAIT_POLL_S = 1.0
"""How often a waiting Run reports (and may be stopped)."""


def machine_memory_bytes() -> int:
    """The memory this process may use: the machine's, or its container's limit (cgroup v2
    or v1) where that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


@dataclass(frozen=True)
class Admission:
    """What a process admits at once (from :class:`core.config.Settings`)."""

    most_runs: int
    """Runs reconstructing at once (``FIELDFLOW_MAX_RUNS``)."""
    memory_bytes: float
    """Their estimated memory together (``FIELDFLOW_RUN_MEMORY_GB``)."""


def run_bytes(sizes: Mapping[str, int]) -> int:
    """The memory a Run of a cube of ``sizes`` (its dimensions: ``y``, ``x``, ``time_s2``)
    is expected to take at its peak (:data:`RUN_FIXED_BYTES` and the rest)."""
    pixels = sizes.get("y", 0) * sizes.get("x", 0)
    per_pixel = RUN_BYTES_PER_PIXEL + RUN_BYTES_PER_PIXEL_DATE * sizes.get("time_s2", 0)
    return int(RUN_FIXED_BYTES + pixels * per_pixel)


class RunGate:
    """Admits Runs one after another, first come first served, while they fit
    (:class:`Admission`); safe to share between threads."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._queue: list[object] = []
        self._running: dict[object, int] = {}

    @contextlib.contextmanager
    def admitted(
        self,
        need_bytes: int,
        limits: Admission,
        report: Callable[[str, int, int], None] = beat,
    ) -> Iterator[None]:
        """Hold a place among the running Runs while inside; wait for it first if the Runs
        ahead leave no room, reporting ``(WAITING_FOR_RUNS, ended, ahead)`` every
        :data:`WAIT_POLL_S` (``report`` may raise to stop waiting: the place in the queue is
        given up)."""
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
        try:
            ahead_at_start: int | None = None
            while True:
                with self._changed:
                    if not self._fits(ticket, need_bytes, limits):
                        self._changed.wait(WAIT_POLL_S)
                    if self._fits(ticket, need_bytes, limits):
                        self._queue.remove(ticket)
                        self._running[ticket] = need_bytes
                        break
                    ahead = self._queue.index(ticket) + len(self._running)
                if ahead_at_start is None:
                    ahead_at_start = ahead
                report(WAITING_FOR_RUNS, max(0, ahead_at_start - ahead), ahead_at_start)
        except BaseException:
            with self._changed:
                if ticket in self._queue:
                    self._queue.remove(ticket)
                self._changed.notify_all()  # the next one may now be at the head
            raise
        try:
            yield
        finally:
            with self._changed:
                del self._running[ticket]
                self._changed.notify_all()

    def _fits(self, ticket: object, need_bytes: int, limits: Admission) -> bool:
        if self._queue[0] is not ticket:
            return False
        if not self._running:
            return True  # alone: even a Run larger than the budget (its own cap bounds it)
        if len(self._running) >= max(1, limits.most_runs):
            return False
        return sum(self._running.values()) + need_bytes <= limits.memory_bytes

    def running(self) -> int:
        """How many Runs hold a place now."""
        with self._changed:
            return len(self._running)

    def waiting(self) -> int:
        """How many Runs wait for one."""
        with self._changed:
            return len(self._queue)


PROCESS_GATE = RunGate()
"""The gate of this process's Runs: the app's sessions and its batch fields share it."""
