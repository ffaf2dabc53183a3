"""The time left in a stage, from its pace (core.progress), with a clock the test sets."""

from __future__ import annotations

from core.progress import (
    StageClock,
    beat,
    duration_text,
    listening,
    part,
    portion,
    time_left_text,
)


class Clock:
    """Seconds that the test sets by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_pace_is_measured_from_the_first_progress_not_the_stage_start() -> None:
    clock = Clock()
    stage = StageClock(clock)
    assert stage.seconds_left("reconstructing", 0, 176) is None
    clock.now = 30.0  # the fits before the first chunk: not part of the pace
    assert stage.seconds_left("reconstructing", 40, 176) is None  # no pace yet
    clock.now = 40.0  # 40 more days in 10 s: 4 days a second, 96 days left
    assert stage.seconds_left("reconstructing", 80, 176) == 24.0
    clock.now = 50.0  # 80 days in 20 s since the first chunk, still 4 a second
    assert stage.seconds_left("reconstructing", 120, 176) == 14.0
    assert stage.seconds_left("reconstructing", 176, 176) is None  # done


def test_a_new_stage_starts_a_new_pace() -> None:
    clock = Clock()
    stage = StageClock(clock)
    stage.seconds_left("fetching S2", 1, 10)
    clock.now = 1.0
    assert stage.seconds_left("fetching S2", 2, 10) == 8.0  # 1 s a frame
    clock.now = 2.0
    assert stage.seconds_left("fetching S1", 1, 10) is None  # the S2 pace does not carry over
    clock.now = 12.0
    assert stage.seconds_left("fetching S1", 2, 10) == 80.0  # 10 s a frame
    clock.now = 13.0  # the same stage counting again from the start
    assert stage.seconds_left("fetching S1", 1, 10) is None


def test_a_pace_waits_for_a_tenth_of_the_stage() -> None:
    # A chunk of days pays its context's pass first: a pace over a day or two overstates.
    clock = Clock()
    stage = StageClock(clock)
    stage.seconds_left("reconstructing", 1, 176)
    clock.now = 3.0
    assert stage.seconds_left("reconstructing", 2, 176) is None
    clock.now = 10.0
    assert stage.seconds_left("reconstructing", 17, 176) is None  # 16 days: under a tenth
    clock.now = 11.0
    assert stage.seconds_left("reconstructing", 19, 176) == 11.0 / 18 * 157
    # A short stage: one step is a tenth and more.
    stage.seconds_left("fetching S2", 1, 8)
    clock.now = 12.0
    assert stage.seconds_left("fetching S2", 2, 8) == 6.0


def test_time_left_text() -> None:
    assert time_left_text(None) is None
    assert time_left_text(6.0) is None  # nearly done: not worth saying
    assert time_left_text(float("inf")) is None
    assert time_left_text(44.0) == "about 40 s left"
    assert time_left_text(54.0) == "about 50 s left"
    assert time_left_text(56.0) == "about 1 min left"
    assert time_left_text(150.0) == "about 2 min left"
    assert time_left_text(3 * 3600.0) == "about 3.0 h left"


def test_a_portion_turns_parts_into_its_share_and_passes_named_beats_on() -> None:
    heard: list[tuple[str, int, int]] = []
    shares: list[float] = []
    with listening(lambda *step: heard.append(step)):
        with portion(shares.append):
            part(0, 4)
            part(3, 4)
            part(9, 4)  # more than all: the share stops at 1
            part(1, 0)  # nothing to share: ignored
            beat("tuning the model to this field", 2, 50)
        part(1, 2)  # outside the portion: the listener hears it as it is
    assert shares == [0.0, 0.75, 1.0]
    assert heard == [("tuning the model to this field", 2, 50), ("", 1, 2)]
    with portion(shares.append):  # nobody listens outside: named beats go nowhere
        beat("measuring", 1, 2)
    part(1, 2)  # nobody listens at all: nothing happens


def test_duration_text() -> None:
    assert duration_text(0.42) == "0.4 s"
    assert duration_text(9.94) == "9.9 s"
    assert duration_text(9.96) == "10 s"
    assert duration_text(52.4) == "52 s"
    assert duration_text(59.7) == "1 min 0 s"
    assert duration_text(190.0) == "3 min 10 s"
    assert duration_text(3599.6) == "1 h 00 min"  # rounded first: never "60 min"
    assert duration_text(3900.0) == "1 h 05 min"
