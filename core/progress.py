"""Time left in a long stage (fetching, reconstructing a season), from its own pace so far.

A Run on a large field takes minutes on a CPU; a progress bar that also says roughly how long
is left lets the user decide whether to wait. The estimate starts from the stage's first
progress report after its start, not from the start itself: a stage's fixed costs (the
per-field fits before the first chunk of days, a search before the first download) come
before any progress and would otherwise inflate every later estimate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

FIRST_SHOWN_S = 10.0
"""Estimates shorter than this are not shown: the stage is nearly done anyway."""

MIN_PACE_SHARE = 0.1
"""A pace is measured over at least this share of a stage's steps before it estimates: a Run's
reconstruction pays a fixed cost at the start of each chunk of days (the context's trunk pass),
so a pace over its first day or two read 1.6 x the time it then took
(benchmarks/run_progress_256.txt)."""


class StageClock:
    """Estimates the seconds left in the current stage of ``(stage, done, total)`` reports.

    Args:
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._stage: str | None = None
        self._first: tuple[float, int] | None = None
        """(time, done) of the stage's first report with some work done."""

    def seconds_left(self, stage: str, done: int, total: int) -> float | None:
        """Seconds left at the pace measured since the stage's first report of progress; None
        until a later report has come at least :data:`MIN_PACE_SHARE` of the stage's steps
        further (no pace yet), or when nothing is left."""
        now = self._clock()
        if stage != self._stage:
            self._stage, self._first = stage, None
        if done <= 0 or total <= 0 or done >= total:
            return None
        if self._first is None or done < self._first[1]:  # a stage that restarted its count
            self._first = (now, done)
            return None
        began, done_then = self._first
        if done == done_then or done - done_then < MIN_PACE_SHARE * total:
            return None
        return (now - began) / (done - done_then) * (total - done)


def time_left_text(seconds: float | None) -> str | None:
    """``"about 40 s left"``, ``"about 3 min left"``; None when there is no estimate or it is
    under :data:`FIRST_SHOWN_S`."""
    if seconds is None or not math.isfinite(seconds) or seconds < FIRST_SHOWN_S:
        return None
    if seconds < 55:  # 55 s and up reads as a minute
        return f"about {int(round(seconds, -1))} s left"
    minutes = seconds / 60
    if minutes < 90:
        return f"about {max(1, round(minutes))} min left"
    return f"about {minutes / 60:.1f} h left"


def duration_text(seconds: float) -> str:
    """``"0.4 s"``, ``"52 s"``, ``"3 min 10 s"``, ``"1 h 05 min"``: a time taken, to the
    precision that matters at its size."""
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


Beat = Callable[[str, int, int], None]
"""``(what, done, total)``: a step of a long piece of work deep inside a computation."""

_listener: ContextVar[Beat | None] = ContextVar("fieldflow_beat", default=None)


PART = ""
"""The ``what`` of a :func:`part` beat: a share of the work of whoever called in, unnamed."""


CHECK = "\x00check"
"""The ``what`` of a :func:`check` beat: no progress, only a chance to stop."""


def check() -> None:
    """Let whoever listens stop the work here (the listener may raise), saying nothing of its
    progress: for a wait that has no steps of its own to report, such as a result awaited from
    a Dask cluster."""
    beat(CHECK, 0, 0)


def beat(what: str, done: int, total: int) -> None:
    """Say that ``done`` of ``total`` steps of ``what`` are done, to whoever listens in this
    thread (:func:`listening`); nothing happens when nobody does.

    Long inner loops (tuning the model to a field, measuring its error there) call this, so
    that a Run's progress moves during them and a Run that is no longer wanted stops there:
    the listener may raise, and the loop then ends with that exception.
    """
    listener = _listener.get()
    if listener is not None:
        listener(what, done, total)


def part(done: int, total: int) -> None:
    """Say that ``done`` of ``total`` parts of the current piece of work are done, without
    naming it: the caller that knows what the piece is (e.g. the chunk of days a Run's curve is
    reconstructing) turns it into its own progress (:func:`portion`). A loop that does not know
    what it serves calls this (the tiles of one reconstruction call); like :func:`beat`, the
    listener may raise to stop it."""
    beat(PART, done, total)


@contextmanager
def listening(listener: Beat) -> Iterator[None]:
    """Send the :func:`beat` calls made in this thread (context) to ``listener`` while inside."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


@contextmanager
def copied_to(send: Beat) -> Iterator[None]:
    """While inside, named beats (not :func:`part` or :func:`check`) also go to ``send`` (e.g.
    on to the process that waits for this work); every beat still goes on to the listener
    outside, which may raise to stop the work."""
    outer = _listener.get()

    def listener(what: str, done: int, total: int) -> None:
        if what not in (PART, CHECK):
            send(what, done, total)
        if outer is not None:
            outer(what, done, total)

    with listening(listener):
        yield


@contextmanager
def portion(share: Callable[[float], None]) -> Iterator[None]:
    """While inside, :func:`part` beats go to ``share`` as the fraction done (0 to 1) of the
    piece of work inside; named beats go on to the listener outside, as before."""
    outer = _listener.get()

    def listener(what: str, done: int, total: int) -> None:
        if what != PART:
            if outer is not None:
                outer(what, done, total)
        elif total > 0:
            share(min(1.0, max(0.0, done / total)))

    with listening(listener):
        yield
