"""The season read off a daily curve: peak, green-up and decline, with the band's windows."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from core.phenology import MIN_AMPLITUDE, season_marks

START = dt.date(2018, 3, 1)


def curve(ndvi: list[float], half_width: float | list[float] | None = None) -> pd.DataFrame:
    """A daily curve from START; ``half_width``: its band either side of the value."""
    values = np.asarray(ndvi, dtype=np.float64)
    width = np.nan if half_width is None else np.asarray(half_width, dtype=np.float64)
    return pd.DataFrame(
        {
            "date": [(START + dt.timedelta(days=i)).isoformat() for i in range(len(values))],
            "ndvi": values,
            "ndvi_p10": values - width,
            "ndvi_p90": values + width,
            "source": ["reconstructed"] * len(values),
            "days_to_clear": pd.array(range(len(values)), dtype="Int64"),
        }
    )


def day(i: int) -> dt.date:
    return START + dt.timedelta(days=i)


def test_a_season_gives_its_peak_and_the_days_it_passes_half_way() -> None:
    # low 0.2 until day 3, up 0.1 a day to 0.8 on day 9, flat, down 0.1 a day to 0.3 on day 17
    ndvi = [0.2] * 4 + [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.3]
    marks = season_marks(curve(ndvi))
    assert marks.peak == 0.8 and marks.peak_day == day(9)  # the first day of the top
    assert (marks.first_day, marks.last_day) == (day(0), day(17))
    up, down = marks.green_up, marks.decline
    assert up.level == 0.5 and up.low == 0.2 and up.day == day(6)  # 0.5: at half-way
    assert down.level == 0.55 and down.low == 0.3 and down.day == day(14)  # 0.5: past 0.55
    assert (up.earliest, up.latest) == (up.day, up.day)  # no band: the day alone
    assert up.days_to_clear == 6 and down.days_to_clear == 14
    assert np.isnan(marks.peak_low) and not marks.peak_observed


def test_the_band_gives_the_window_the_crossing_could_lie_in() -> None:
    ndvi = [0.2, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    marks = season_marks(curve(ndvi, 0.15))
    # up: p90 reaches 0.5 from day 4 (0.4 + 0.15), p10 is under 0.5 until day 6 (0.6 - 0.15)
    assert marks.green_up.day == day(5)
    assert (marks.green_up.earliest, marks.green_up.latest) == (day(4), day(7))
    # down (level 0.5): p10 reaches it on day 11 (0.6 - 0.15); p90 over it until day 13
    assert marks.decline.day == day(12)
    assert (marks.decline.earliest, marks.decline.latest) == (day(11), day(14))
    assert (marks.peak_low, marks.peak_high) == (0.8 - 0.15, 0.8 + 0.15)
    # a wider band in a cloudy stretch: a wider window, the same days
    wide = season_marks(curve(ndvi, 0.35))
    assert wide.green_up.day == day(5) and wide.decline.day == day(12)
    assert wide.green_up.earliest < day(4) and wide.green_up.latest > day(7)


def test_the_green_up_is_the_last_rise_before_the_peak_and_small_moves_do_not_count() -> None:
    # a wobble over half-way early on, back down, then the season: the green-up is the season's
    ndvi = [0.3, 0.55, 0.3, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.75]
    marks = season_marks(curve(ndvi))
    assert marks.green_up.day == day(6)
    assert marks.decline is None  # 0.8 to 0.75: under MIN_AMPLITUDE
    flat = season_marks(curve([0.6, 0.62, 0.6 + MIN_AMPLITUDE * 0.9, 0.61, 0.6]))
    assert flat.green_up is None and flat.decline is None and flat.peak_day == day(2)


def test_days_without_a_value_are_left_out_and_an_empty_curve_has_no_season() -> None:
    rows = curve([0.2, 0.3, 0.5, 0.8, 0.6, 0.3])
    rows.loc[0, "ndvi"] = np.nan  # the period's first day before the first acquisition
    marks = season_marks(rows)
    assert marks.first_day == day(1) and marks.green_up.low == 0.3
    rows["ndvi"] = np.nan
    assert season_marks(rows) is None


def test_the_peak_says_whether_it_was_observed() -> None:
    rows = curve([0.2, 0.5, 0.8, 0.5, 0.2])
    rows.loc[2, "source"] = "observed"
    assert season_marks(rows).peak_observed
