"""Dates: parsing user input, regular query grids, and day numbers for the maths.

Acquisition times keep their time of day in the cube; user queries are calendar days. Methods
work on float day numbers (days since 1970-01-01, UTC), so everything here converts to and from
that one representation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

from core.errors import InputError, NoScenesError

DAY_NS = np.int64(86_400 * 10**9)
YEARS = (1900, 2199)
"""The years a date may fall in (Sentinel-2 has acquired since 2015; nanosecond times, which
the cubes use, end in 2262)."""


_ISO_DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?")
"""A calendar date (month and day with or without a leading zero), optionally with a time of
day and a UTC offset (ISO 8601)."""


def parse_date(text: str) -> np.datetime64:
    """Parse a calendar date ``YYYY-MM-DD`` (ISO 8601) into datetime64[ns] at midnight UTC."""
    given = str(text).strip()
    if not _ISO_DATE.fullmatch(given):  # pandas reads 'may' or '5' as some date
        raise InputError(f"Cannot read the date '{text}': write it as YYYY-MM-DD.")
    try:
        stamp = pd.Timestamp(given)
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"The date '{text}' does not exist in the calendar; write it as YYYY-MM-DD."
        ) from exc
    if stamp is pd.NaT:
        raise InputError(f"Cannot read the date '{text}': write it as YYYY-MM-DD.")
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    if not YEARS[0] <= stamp.year <= YEARS[1]:
        raise InputError(
            f"The date '{text}' is outside the years FieldFlow works with ({YEARS[0]}-{YEARS[1]});"
            " Sentinel-2 has acquired since 2015 and Sentinel-1 since 2014."
        )
    return np.datetime64(stamp.normalize().to_datetime64(), "ns")


def parse_date_list(text: str | Iterable[str]) -> np.ndarray:
    """Parse ``"2019-05-03,2019-06-10"`` (or an iterable of strings) into sorted unique dates."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    parts = [p for p in (str(p).strip() for p in parts) if p]
    if not parts:
        raise InputError("No dates given: pass one or more dates as YYYY-MM-DD,YYYY-MM-DD.")
    return np.unique(np.array([parse_date(p) for p in parts], dtype="datetime64[ns]"))


def regular_dates(
    start: str | np.datetime64, end: str | np.datetime64, every_days: int
) -> np.ndarray:
    """Every ``every_days`` days from ``start`` to ``end`` inclusive, as datetime64[ns]."""
    if every_days < 1:
        raise InputError(f"--every-days must be a whole number of days >= 1, not {every_days}.")
    first = parse_date(str(start)) if not isinstance(start, np.datetime64) else start
    last = parse_date(str(end)) if not isinstance(end, np.datetime64) else end
    first = np.datetime64(first, "D")
    last = np.datetime64(last, "D")
    if last < first:
        raise InputError(f"The period ends ({last}) before it starts ({first}); swap the dates.")
    span = int((last - first).astype(np.int64))
    step = min(int(every_days), span + 1)  # a step past the period's end: its first day alone
    return np.arange(first, last + np.timedelta64(1, "D"), step).astype("datetime64[ns]")


def require_acquisitions_around(
    days: Iterable[np.datetime64], first: np.datetime64, last: np.datetime64, found: str
) -> None:
    """Refuse a period the acquisitions all lie on one side of: frames and the curve run
    between the first and last acquisition, so there is nothing to reconstruct in it. A
    period with acquisitions on both sides and none inside (a few days between two passes)
    is fine.

    Args:
        days: the acquisitions' days (calendar days, UTC).
        first, last: the period's first and last day.
        found: where the acquisitions were found, to end "... Sentinel-2 acquisition ..."
            ("of the field (searched from ... to ...)", "in the offline cube x.nc").

    Raises:
        NoScenesError: saying on which side they lie and which period would do. Before
            review 22 the app said "The period ends (2018-08-27) before it starts
            (2018-08-29); swap the dates" of a period ordered right, after the imagery's end.
    """
    acquired = np.asarray(sorted(np.datetime64(d, "D") for d in days), dtype="datetime64[D]")
    first, last = np.datetime64(first, "D"), np.datetime64(last, "D")
    if acquired.size == 0 or (acquired[-1] >= first and acquired[0] <= last):
        return
    if acquired[-1] < first:
        raise NoScenesError(
            f"No Sentinel-2 acquisition {found} falls on or after {first}: the latest is from "
            f"{acquired[-1]}, before the period {first} to {last} starts, and nothing can be "
            "reconstructed after the last acquisition. Choose a period that starts on or "
            f"before {acquired[-1]} (a scene is published a day or more after it is taken)."
        )
    raise NoScenesError(
        f"No Sentinel-2 acquisition {found} falls on or before {last}: the earliest is from "
        f"{acquired[0]}, after the period {first} to {last} ends, and nothing can be "
        "reconstructed before the first acquisition. Choose a period that ends on or after "
        f"{acquired[0]}."
    )


def to_days(times: np.ndarray) -> np.ndarray:
    """datetime64 array -> float64 days since 1970-01-01 (fractional: keeps the time of day)."""
    ns = np.asarray(times, dtype="datetime64[ns]").astype(np.int64)
    return ns / float(DAY_NS)


def calendar_day(times: np.ndarray) -> np.ndarray:
    """datetime64 array -> datetime64[D] (the UTC calendar day of each time)."""
    return np.asarray(times, dtype="datetime64[ns]").astype("datetime64[D]")


def day_of_year(times: np.ndarray) -> np.ndarray:
    """Day of year (1..366) of each time, as float64."""
    days = calendar_day(times)
    years = days.astype("datetime64[Y]")
    return (days - years).astype(np.int64).astype(np.float64) + 1.0
