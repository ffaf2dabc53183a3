"""Jobs outlive the script that started them, are shared by key, and stop when nobody waits."""

from __future__ import annotations

import threading
import time

import pytest

from core.errors import InputError
from core.jobs import (
    UNCLAIMED_KEEP_S,
    JobBoard,
    JobCancelled,
    Report,
    seconds_left,
    stage_spans,
)
from core.progress import beat, part, portion
from tests.support.waiting import until


class Steps:
    """A computation of ``n`` steps that waits for a go-ahead before each one."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at = n, fail_at
        self.go = threading.Semaphore(0)
        self.calls = 0
        self.steps_done = 0

    def __call__(self, progress) -> str:
        self.calls += 1
        for i in range(self.n):
            progress("working", i, self.n)
            assert self.go.acquire(timeout=10), "never let go on"
            if i == self.fail_at:
                raise InputError("no clear pixel")
            self.steps_done += 1
        progress("working", self.n, self.n)
        return f"result after {self.steps_done} steps"


def test_a_rejoined_job_goes_on_where_it_was_and_its_work_is_done_once() -> None:
    board, work = JobBoard(), Steps(3)
    job = board.join("run-a", work, "session-1")
    work.go.release()
    until(lambda: len(job.reports()) == 2)
    # The script that started it is gone (a rerun); the next one asks for the same key.
    again = board.join("run-a", Steps(3), "session-1")
    assert again is job
    assert [r.done for r in again.reports()] == [0, 1]  # where it is, not from the start
    work.go.release()
    work.go.release()
    assert job.wait(5)
    assert job.outcome() == "result after 3 steps" and work.calls == 1
    assert board.running() == []
    board.collect("run-a", job)
    assert board.join("run-a", Steps(0), "session-1") is not job  # collected: a new Run


def test_two_sessions_share_a_job_and_it_stops_only_when_both_leave() -> None:
    board, work = JobBoard(), Steps(5)
    job = board.join("run-a", work, "session-1")
    assert board.join("run-a", Steps(5), "session-2") is job
    assert board.leave("run-a", "session-1") is False  # session 2 still waits
    work.go.release()
    until(lambda: work.steps_done == 1)
    assert board.leave("run-a", "session-2") is True
    work.go.release()  # the next progress report stops it
    assert job.wait(5)
    assert isinstance(job.error, JobCancelled) and work.steps_done == 2
    assert board.running() == []
    # Asked for again later: a fresh job, not the cancelled one.
    fresh = board.join("run-a", Steps(0), "session-1")
    assert fresh is not job and fresh.wait(5) and fresh.outcome() == "result after 0 steps"


def test_a_failure_is_raised_to_whoever_collects_the_job() -> None:
    board, work = JobBoard(), Steps(3, fail_at=1)
    job = board.join("run-a", work, "session-1")
    work.go.release()
    work.go.release()
    assert job.wait(5)
    with pytest.raises(InputError, match="no clear pixel"):
        job.outcome()
    # Collected by the page that watched it: the same job and its failure...
    assert board.join("run-a", Steps(0), "session-1", retry_failed=False) is job
    # ...but a user asking anew (the page was reloaded meanwhile) gets a fresh try.
    fresh = board.join("run-a", Steps(0), "session-1")
    assert fresh is not job and fresh.wait(5) and fresh.outcome() == "result after 0 steps"


def test_a_finished_job_nobody_collects_is_dropped_after_a_while() -> None:
    now = [time.monotonic()]
    board = JobBoard(clock=lambda: now[0])
    job = board.join("run-a", Steps(0), "session-1")
    assert job.wait(5)
    assert board.join("run-a", Steps(0), "session-2") is job  # kept: the user may come back
    now[0] += UNCLAIMED_KEEP_S + 1
    assert board.join("run-a", Steps(0), "session-2") is not job


def test_a_cancelled_job_stops_inside_an_inner_loop_that_only_beats() -> None:
    # Tuning the model to a field reports no stage progress, only core.progress.beat: a job
    # nobody waits for any more must stop there too, not keep the cores to the loop's end.
    started, steps = threading.Event(), []

    def tuning(progress) -> None:
        progress("reconstructing", 0, 10)
        for i in range(10_000):
            started.set()
            steps.append(i)
            beat("tuning the model to this field", i + 1, 10_000)
            time.sleep(0.001)

    board = JobBoard()
    job = board.join("run-a", tuning, "session-1")
    assert started.wait(5)
    until(lambda: any(r.stage.startswith("tuning") for r in job.reports()))
    assert board.leave("run-a", "session-1")
    assert job.wait(5) and isinstance(job.error, JobCancelled)
    assert len(steps) < 10_000
    beat("outside any job", 1, 1)  # nobody listens: nothing happens


def test_a_cancelled_job_stops_at_a_part_of_a_chunk_which_is_never_a_stage_of_its_own() -> None:
    # A large field's chunk of days takes a minute or more; its tiles report as parts of it
    # (core.progress.part). Outside a portion they only let a cancelled job stop; inside one
    # they move the stage that the portion names.
    started, tiles = threading.Event(), []

    def reconstructing(progress) -> None:
        progress("reconstructing", 0, 40)
        part(0, 5)  # nobody turns these into progress here: not a stage, not recorded
        with portion(lambda fraction: progress("reconstructing", int(fraction * 40), 40)):
            part(1, 4)
            part(1, 4)  # the same report again: recorded once
            beat("tuning the model to this field", 1, 2)  # a named one goes on as before
            for i in range(10_000):
                started.set()
                tiles.append(i)
                part(2 + i, 10_002)
                time.sleep(0.001)

    board = JobBoard()
    job = board.join("run-a", reconstructing, "session-1")
    assert started.wait(5)
    assert board.leave("run-a", "session-1")
    assert job.wait(5) and isinstance(job.error, JobCancelled)
    assert len(tiles) < 10_000
    reports = [(r.stage, r.done, r.total) for r in job.reports()]
    assert reports[:3] == [
        ("reconstructing", 0, 40),
        ("reconstructing", 10, 40),
        ("tuning the model to this field", 1, 2),
    ]
    named = ("reconstructing", "tuning the model to this field")
    assert all(stage in named for stage, *_ in reports)


def test_stage_spans_sum_each_stages_stretches_in_order_of_first_report() -> None:
    reports = [Report("reading", 0, 1, at=0.0), Report("reading", 1, 1, at=2.0),
               Report("preparing", 0, 1, at=3.0), Report("tuning", 0, 50, at=4.0),
               Report("tuning", 50, 50, at=54.0), Report("preparing", 0, 1, at=60.0),
               Report("reconstructing", 0, 100, at=61.0),
               Report("reconstructing", 20, 100, at=71.0)]  # fmt: skip
    spans = stage_spans(reports, now=75.0)
    assert [(s.stage, s.seconds, s.done, s.total, s.current) for s in spans] == [
        ("reading", 3.0, 1, 1, False),
        ("preparing", 2.0, 0, 1, False),  # 3-4 s and 60-61 s
        ("tuning", 56.0, 50, 50, False),
        ("reconstructing", 14.0, 20, 100, True),  # to now
    ]
    assert stage_spans([], now=1.0) == []


def test_time_left_comes_from_the_reports_own_times_and_counts_down_between_them() -> None:
    reports = [Report("fetching", 4, 4, at=0.0), Report("reconstructing", 0, 100, at=10.0),
               Report("reconstructing", 10, 100, at=40.0),  # fits before: not in the pace
               Report("reconstructing", 30, 100, at=50.0)]  # fmt: skip
    assert seconds_left(reports, now=50.0) == 35.0  # 2 days a second, 70 left
    assert seconds_left(reports, now=60.0) == 25.0  # no report since: counting down
    assert seconds_left(reports[:3], now=40.0) is None  # no pace yet
    assert seconds_left([], now=0.0) is None
