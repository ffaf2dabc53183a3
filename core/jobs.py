"""Long computations that outlive the page script that asked for them.

Streamlit stops a page's script whenever the user touches a widget, and a Run computed inside
the script died with it: the rerun had to start the Run again from nothing (20 minutes lost on
a large field). A :class:`Job` runs the computation in its own thread instead; the script only
watches its progress, and the script of the next rerun (or another session asking for the same
Run) picks the same job up where it is. A job nobody watches any more is cancelled at its next
progress report, so it stops taking the cores from the Run that replaced it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from core.progress import CHECK, PART, StageClock, listening

T = TypeVar("T")

Progress = Callable[[str, int, int], None]
"""``(stage, done, total)``, as :func:`core.season.compute_season` reports."""

UNCLAIMED_KEEP_S = 1800.0
"""How long a finished job whose result nobody has collected is kept (the user may come back
and press Run again: the result is then there at once)."""


class JobCancelled(BaseException):  # a signal, not an error: hence no "Error" in the name
    """Raised inside a job's computation at its next progress report once it is cancelled.
    A BaseException, so that no ``except Exception`` in the computation swallows it."""


@dataclass(frozen=True)
class Report:
    """One progress report of a job."""

    stage: str
    done: int
    total: int
    at: float = 0.0
    """When it came (``time.monotonic()``)."""


class Job(Generic[T]):
    """One computation running in its own thread.

    Args:
        compute: the work; called with a progress callback, returns the result.
    """

    def __init__(self, compute: Callable[[Progress], T]) -> None:
        self._compute = compute
        self._lock = threading.Lock()
        self._reports: list[Report] = []
        self._watchers: set[str] = set()
        self._cancelled = False
        self._done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.started_at = time.monotonic()
        self.finished_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="fieldflow-job", daemon=True)

    def start(self) -> Job[T]:
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            # The computation's inner loops report through core.progress.beat: they show on
            # the bar too, and a cancelled job stops there rather than at the next stage.
            with listening(self._report):
                self.result = self._compute(self._report)
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            self._done.set()

    def _report(self, stage: str, done: int, total: int) -> None:
        if self._cancelled:
            raise JobCancelled
        if stage in (PART, CHECK):  # a share of no stage the job knows, or a check: stop only
            return
        with self._lock:
            last = self._reports[-1] if self._reports else None
            if last is None or (last.stage, last.done, last.total) != (stage, done, total):
                self._reports.append(Report(stage, done, total, time.monotonic()))

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def wait(self, timeout_s: float | None) -> bool:
        """Wait up to ``timeout_s`` (None: as long as it takes) for the job to end; whether
        it has."""
        return self._done.wait(timeout_s)

    def reports(self) -> list[Report]:
        """The progress reports so far (a copy)."""
        with self._lock:
            return list(self._reports)

    def watch(self, watcher: str) -> None:
        with self._lock:
            self._watchers.add(watcher)

    def unwatch(self, watcher: str) -> bool:
        """Forget ``watcher``; cancel the job when nobody else watches it. Whether it was
        cancelled."""
        with self._lock:
            self._watchers.discard(watcher)
            if not self._watchers and not self._done.is_set():
                self._cancelled = True
        return self._cancelled

    def outcome(self) -> T:
        """The result of a finished job, or its error raised again."""
        if not self._done.is_set():
            raise RuntimeError("the job has not finished")
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class JobBoard:
    """The jobs of one process, by key (e.g. a Run's request key); safe to share between
    threads (the app's sessions each run in their own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def join(
        self,
        key: str,
        compute: Callable[[Progress], T],
        watcher: str,
        *,
        retry_failed: bool = True,
    ) -> Job[T]:
        """The running (or finished, not yet collected) job of ``key``, started with
        ``compute`` if there is none or the one there was cancelled; ``watcher`` is noted
        as waiting for it. With ``retry_failed``, one that failed is started again too: a
        failure nobody saw (the page was reloaded) is not replayed to a user asking anew, who
        may be asking because the network is back."""
        with self._lock:
            self._drop_unclaimed()
            job = self._jobs.get(key)
            failed = job is not None and job.done and job.error is not None
            if job is None or job.cancelled or (failed and retry_failed):
                job = self._jobs[key] = Job(compute).start()
            job.watch(watcher)
            return job

    def collect(self, key: str, job: Job) -> None:
        """Forget a finished job once its outcome is taken (the caller keeps the result)."""
        with self._lock:
            if self._jobs.get(key) is job and job.done:
                del self._jobs[key]

    def leave(self, key: str, watcher: str) -> bool:
        """``watcher`` no longer waits for ``key``'s job: it is cancelled if nobody else does.
        Whether it was cancelled."""
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                return False
            cancelled = job.unwatch(watcher)
            if cancelled:
                del self._jobs[key]
            return cancelled

    def job(self, key: str) -> Job | None:
        """The job of ``key``, if there is one (running, or ended and not collected)."""
        with self._lock:
            return self._jobs.get(key)

    def running(self) -> list[str]:
        """Keys of the jobs not yet finished."""
        with self._lock:
            return [key for key, job in self._jobs.items() if not job.done]

    def _drop_unclaimed(self) -> None:
        now = self._clock()
        for key, job in list(self._jobs.items()):
            if job.finished_at is not None and now - job.finished_at > UNCLAIMED_KEEP_S:
                del self._jobs[key]


@dataclass(frozen=True)
class StageSpan:
    """How long a job spent in one stage so far, from its reports."""

    stage: str
    seconds: float
    done: int
    total: int
    current: bool
    """The stage of the last report (still going while the job runs)."""


def stage_spans(reports: list[Report], now: float) -> list[StageSpan]:
    """The stages of ``reports`` in the order they first came, each with the seconds from its
    first report to the next stage's (the current one: to ``now``) summed over every stretch
    in it, and its last counts."""
    if not reports:
        return []
    seconds: dict[str, float] = {}
    last: dict[str, Report] = {}
    for report, after in zip(reports, [*reports[1:], None], strict=True):
        last[report.stage] = report
        until = now if after is None else after.at
        seconds[report.stage] = seconds.get(report.stage, 0.0) + max(0.0, until - report.at)
    current = reports[-1].stage
    return [
        StageSpan(stage, seconds[stage], last[stage].done, last[stage].total, stage == current)
        for stage in seconds
    ]


def seconds_left(reports: list[Report], now: float) -> float | None:
    """Seconds left in the stage of the last report at ``now``, at the pace of that stage's
    reports so far (:class:`core.progress.StageClock`), counting down between reports; None
    without a pace yet."""
    if not reports:
        return None
    at = iter([r.at for r in reports])
    clock = StageClock(lambda: next(at))
    left = None
    for report in reports:
        left = clock.seconds_left(report.stage, report.done, report.total)
    return None if left is None else left - (now - reports[-1].at)
