"""The season read off a field's daily NDVI curve: its peak, its green-up and its decline.

An agronomist asks of a season's curve when the crop greened up, when it peaked and when it
senesced or was harvested (review 30: the page answered none of them). The dates here are the
common half-amplitude ones (as TIMESAT's seasonal thresholds at 50 %): green-up is the day the
curve, rising from its lowest value before the peak, passes half-way to the peak (the last such
day before the peak: an early wobble is not the season's start); decline is the first day after
the peak it falls through half-way from the peak to its lowest value after it.

Each date comes with the window the curve's p10-p90 band allows: from the first day the band
reaches the level to the last day it has not yet passed it. A crossing in a stretch of clear
observations has a window of a few days; one inside a long cloudy gap, as wide as the gap's
band makes it. A curve without a band gets the crossing day alone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_AMPLITUDE = 0.1
"""An NDVI rise (or fall) smaller than this around the peak is not called a green-up (or a
decline): the wobble of a grassland or an evergreen, or a period that starts after the
green-up."""


@dataclass(frozen=True)
class Crossing:
    """A day the curve passes a level: green-up (rising) or decline (falling)."""

    day: dt.date
    """The first day at or past the level (at or over it rising, at or under it falling)."""
    earliest: dt.date
    """The first day the band reaches the level: the crossing could be this early."""
    latest: dt.date
    """The last day the band has not yet passed the level: it could be this late."""
    level: float
    """The NDVI level: half-way between the season's low (before or after the peak) and its
    peak."""
    low: float
    """That low."""
    days_to_clear: int | None
    """On ``day``, the field's median days to its nearest clear observation (the CSV's)."""


@dataclass(frozen=True)
class SeasonMarks:
    """A curve's peak and, where the curve rises or falls enough around it, its green-up and
    decline."""

    peak_day: dt.date
    peak: float
    """The curve's largest NDVI."""
    peak_low: float
    """The band's p10 on the peak's day (NaN without a band)."""
    peak_high: float
    """The band's p90 on the peak's day (NaN without a band)."""
    peak_observed: bool
    """The peak's day was seen clear on half the field or more (the CSV's ``source``)."""
    green_up: Crossing | None
    decline: Crossing | None
    first_day: dt.date
    """The curve's first day with a value: a peak near it may have come before the period."""
    last_day: dt.date
    """The curve's last day with a value."""


def season_marks(curve: pd.DataFrame) -> SeasonMarks | None:
    """The season of a daily curve (the columns of :func:`core.curve.ndvi_curve`: ``date``,
    ``ndvi``, ``ndvi_p10``, ``ndvi_p90``, ``source``, ``days_to_clear``), or None where it
    has no NDVI. Days without a value are left out; the rest should be consecutive days (a
    sparser curve gives dates only as fine as its spacing)."""
    rows = curve[np.isfinite(curve["ndvi"].to_numpy(np.float64))]
    if rows.empty:
        return None
    days = [_as_date(d) for d in rows["date"]]
    ndvi = rows["ndvi"].to_numpy(np.float64)
    low = _column(rows, "ndvi_p10")
    high = _column(rows, "ndvi_p90")
    to_clear = rows["days_to_clear"].tolist() if "days_to_clear" in rows else [None] * len(days)
    top = int(np.argmax(ndvi))
    observed = "source" in rows and rows["source"].iloc[top] == "observed"
    crossings = []
    for rising in (True, False):
        span = slice(0, top + 1) if rising else slice(top, len(ndvi))
        crossing = _crossing(ndvi[span], low[span], high[span], rising=rising)
        if crossing is None:
            crossings.append(None)
            continue
        at, first, last, level, bottom = crossing
        offset = span.start
        away = to_clear[offset + at]
        crossings.append(
            Crossing(
                day=days[offset + at],
                earliest=days[offset + first],
                latest=days[offset + last],
                level=level,
                low=bottom,
                days_to_clear=None if away is None or pd.isna(away) else int(away),
            )
        )
    return SeasonMarks(
        peak_day=days[top],
        peak=float(ndvi[top]),
        peak_low=float(low[top]),
        peak_high=float(high[top]),
        peak_observed=bool(observed),
        green_up=crossings[0],
        decline=crossings[1],
        first_day=days[0],
        last_day=days[-1],
    )


def _crossing(
    ndvi: np.ndarray, low: np.ndarray, high: np.ndarray, *, rising: bool
) -> tuple[int, int, int, float, float] | None:
    """(crossing, earliest, latest, level, low) as indices into the arrays, which run from
    the season's start to its peak (``rising``: the peak is the last value) or from the peak
    (the first) to the season's end; None where the curve moves less than
    :data:`MIN_AMPLITUDE` between them."""
    peak_at = len(ndvi) - 1 if rising else 0
    bottom_at = int(np.argmin(ndvi))
    bottom = float(ndvi[bottom_at])
    if ndvi[peak_at] - bottom < MIN_AMPLITUDE:
        return None
    level = (float(ndvi[peak_at]) + bottom) / 2
    # between the low and the peak: where the value is past the level, and where the band says
    # it could be past it (p90 over it rising, p10 under it falling) or could be short of it
    span = slice(min(bottom_at, peak_at), max(bottom_at, peak_at) + 1)
    values, p10, p90 = ndvi[span], low[span], high[span]
    if rising:  # the last rise through the level before the peak
        past = values >= level
        could_be_past = np.nan_to_num(p90, nan=-np.inf) >= level
        could_be_short = np.nan_to_num(p10, nan=np.inf) < level
        at = int(np.flatnonzero(~past)[-1]) + 1
    else:  # the first fall through it after the peak
        past = values <= level
        could_be_past = np.nan_to_num(p10, nan=np.inf) <= level
        could_be_short = np.nan_to_num(p90, nan=-np.inf) > level
        at = int(np.flatnonzero(past)[0])
    earliest = min(int(np.flatnonzero(could_be_past)[0]) if could_be_past.any() else at, at)
    shorts = np.flatnonzero(could_be_short)
    latest = max(int(shorts[-1]) + 1 if shorts.size else at, at)
    latest = min(latest, len(values) - 1)
    return at + span.start, earliest + span.start, latest + span.start, level, bottom


def _column(rows: pd.DataFrame, name: str) -> np.ndarray:
    if name not in rows:
        return np.full(len(rows), np.nan)
    return rows[name].to_numpy(np.float64)


def _as_date(value: object) -> dt.date:
    return pd.Timestamp(value).date()
