"""Runs admitted one after another while they fit the process's memory and cores, with real
threads (core.admission)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from core.admission import (
    RUN_FIXED_BYTES,
    WAITING_FOR_RUNS,
    Admission,
    RunGate,
    machine_memory_bytes,
    run_bytes,
)
from core.config import Settings
from core.errors import InputError

GB = 10**9


class Holder:
    """A Run in its own thread: it takes its place in the gate, then holds it until let go."""

    def __init__(
        self,
        gate: RunGate,
        need: int,
        limits: Admission,
        report: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.admitted = threading.Event()
        self.release = threading.Event()
        self.reports: list[tuple[str, int, int]] = []
        self.error: BaseException | None = None

        def heard(stage: str, done: int, total: int) -> None:
            self.reports.append((stage, done, total))
            if report is not None:
                report(stage, done, total)

        def run() -> None:
            try:
                with gate.admitted(need, limits, heard):
                    self.admitted.set()
                    self.release.wait(30)
            except BaseException as exc:  # kept for the test to read
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.release.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def waiting_for(gate: RunGate, count: int) -> None:
    """Wait until ``count`` Runs wait in ``gate``."""
    deadline = time.monotonic() + 30
    while gate.waiting() != count:
        assert time.monotonic() < deadline, f"{gate.waiting()} waiting, not {count}"
        time.sleep(0.01)


def test_no_more_runs_at_once_than_allowed_and_the_next_goes_when_one_ends() -> None:
    gate = RunGate()
    limits = Admission(most_runs=2, memory_bytes=100 * GB)
    first, second = Holder(gate, GB, limits), Holder(gate, GB, limits)
    assert first.admitted.wait(10) and second.admitted.wait(10)
    third = Holder(gate, GB, limits)
    waiting_for(gate, 1)
    assert not third.admitted.wait(1.5)  # two run, one waits
    assert gate.running() == 2
    first.finish()
    assert third.admitted.wait(10)
    # it said it waited for the two ahead of it, none of which had ended then
    assert third.reports[0] == (WAITING_FOR_RUNS, 0, 2)
    for holder in (second, third):
        holder.finish()
    assert gate.running() == 0 and gate.waiting() == 0


def test_a_run_waits_while_its_memory_does_not_fit_beside_those_running() -> None:
    gate = RunGate()
    limits = Admission(most_runs=8, memory_bytes=10 * GB)
    big = Holder(gate, 7 * GB, limits)
    assert big.admitted.wait(10)
    small = Holder(gate, 3 * GB, limits)  # 7 + 3 fits in 10
    assert small.admitted.wait(10)
    other = Holder(gate, 2 * GB, limits)  # 12 would not
    waiting_for(gate, 1)
    assert not other.admitted.wait(1.5)
    small.finish()
    assert other.admitted.wait(10)  # 7 + 2
    big.finish()
    other.finish()


def test_a_run_larger_than_the_budget_runs_alone_and_then_the_rest_wait_for_it() -> None:
    gate = RunGate()
    limits = Admission(most_runs=8, memory_bytes=10 * GB)
    huge = Holder(gate, 30 * GB, limits)
    assert huge.admitted.wait(10)  # alone: its own cap (FIELDFLOW_MAX_PIXEL_DATES) bounds it
    tiny = Holder(gate, 1, limits)
    waiting_for(gate, 1)
    assert not tiny.admitted.wait(1.5)
    huge.finish()
    assert tiny.admitted.wait(10)
    tiny.finish()


def test_first_come_first_served_a_small_run_does_not_pass_a_large_one_waiting() -> None:
    # Otherwise a stream of small Runs could keep a large one waiting for ever.
    gate = RunGate()
    limits = Admission(most_runs=8, memory_bytes=10 * GB)
    running = Holder(gate, 6 * GB, limits)
    assert running.admitted.wait(10)
    large = Holder(gate, 6 * GB, limits)
    waiting_for(gate, 1)
    small = Holder(gate, 1 * GB, limits)  # would fit now, but the large one came first
    waiting_for(gate, 2)
    assert not small.admitted.wait(1.5)
    running.finish()
    assert large.admitted.wait(10) and small.admitted.wait(10)  # 6 + 1: both go
    large.finish()
    small.finish()


def test_a_stopped_run_leaves_the_queue_and_the_one_behind_it_goes() -> None:
    class Stopped(Exception):
        pass

    stop = threading.Event()

    def report(_stage: str, _done: int, _total: int) -> None:
        if stop.is_set():
            raise Stopped  # as a cancelled job's progress report does (core.jobs)

    gate = RunGate()
    limits = Admission(most_runs=8, memory_bytes=10 * GB)
    running = Holder(gate, 6 * GB, limits)
    assert running.admitted.wait(10)
    stopped = Holder(gate, 6 * GB, limits, report)
    waiting_for(gate, 1)
    behind = Holder(gate, 1 * GB, limits)
    waiting_for(gate, 2)
    stop.set()
    stopped.thread.join(10)
    assert isinstance(stopped.error, Stopped) and not stopped.admitted.is_set()
    assert behind.admitted.wait(10)  # 6 + 1 fits: nothing ahead of it any more
    assert gate.waiting() == 0
    running.finish()
    behind.finish()


def test_a_run_that_fails_gives_its_place_back() -> None:
    gate = RunGate()
    limits = Admission(most_runs=1, memory_bytes=10 * GB)
    with pytest.raises(ZeroDivisionError), gate.admitted(GB, limits):
        _ = 1 / 0
    assert gate.running() == 0
    with gate.admitted(GB, limits):  # at once: nothing holds it
        assert gate.running() == 1


def test_a_runs_memory_follows_its_cube_size() -> None:
    # The three Runs measured (less the process's own 0.7 GB), within 10 %.
    for (px, dates), measured_gb in {(117, 30): 2.0, (244, 118): 3.9, (486, 118): 9.8}.items():
        sizes = {"time_s2": dates, "band": 10, "y": px, "x": px, "time_s1": 158}
        assert run_bytes(sizes) == pytest.approx(measured_gb * GB, rel=0.1)
    assert run_bytes({}) == RUN_FIXED_BYTES


def test_the_limits_come_from_the_environment_and_bad_values_are_refused() -> None:
    limits = Settings.from_env({"FIELDFLOW_MAX_RUNS": "3", "FIELDFLOW_RUN_MEMORY_GB": "2.5"})
    assert limits.admission == Admission(most_runs=3, memory_bytes=2.5 * GB)
    default = Settings.from_env({}).admission
    assert default.most_runs >= 1
    assert 0 < default.memory_bytes < machine_memory_bytes()
    for name, value in (
        ("FIELDFLOW_MAX_RUNS", "0"),
        ("FIELDFLOW_MAX_RUNS", "1.5"),
        ("FIELDFLOW_MAX_RUNS", "many"),
        ("FIELDFLOW_RUN_MEMORY_GB", "0"),
        ("FIELDFLOW_RUN_MEMORY_GB", "-4"),
    ):
        with pytest.raises(InputError, match=name):
            Settings.from_env({name: value})
