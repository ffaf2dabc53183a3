"""The NDVI chart: daily curve with its p10-p90 band, observations, cloudy acquisitions, the
Whittaker reference, and the selected date. Clicking a point selects its date."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.state import Key, widget_value
from app.widgets.timeline import NDVI_SCALE, select_day, within_frames
from core.curve import OBSERVED_MIN_CLEAR_FRACTION
from core.phenology import MIN_AMPLITUDE, Crossing, SeasonMarks, season_marks
from core.season import WHOLLY_CLEAR_FRACTION, SeasonResult

CLEAR_NAME = f"Clear ({WHOLLY_CLEAR_FRACTION:.0%}+ of the field seen)"
PARTLY_NAME = (
    f"Partly clear ({OBSERVED_MIN_CLEAR_FRACTION * 100:.0f}-{WHOLLY_CLEAR_FRACTION:.0%}): "
    "its clear part's mean"
)
CLOUDY_NAME = f"Cloudy (under {OBSERVED_MIN_CLEAR_FRACTION:.0%} seen clear)"
"""The legend's names of the acquisitions' points, with the thresholds the slider's labels and
the summary's "mostly clear" use (review 30: four words for overlapping things, and their
thresholds nowhere on the page)."""
CURVE_COLOUR = "#1a9850"
BAND_COLOUR = "rgba(26, 152, 80, 0.18)"
OBSERVED_COLOUR = "#08306b"
CLOUDY_COLOUR = "#8c8c8c"
REFERENCE_COLOUR = "#d95f02"
PARTLY_MARKER = {
    "color": "rgba(255, 255, 255, 0.9)",
    "size": 8,
    "line": {"color": OBSERVED_COLOUR, "width": 2},
}
SELECTED_COLOUR = "#e7298a"
QUERY_COLOUR = "#5e3c99"
QUERY_NAME = "Query date"
"""The legend's name of the Query date's point (review 30: a day looked up there showed
nowhere on the chart, whose line is the slider's date)."""


def ndvi_figure(
    result: SeasonResult,
    selected: dt.date,
    *,
    show_reference: bool,
    query: dt.date | None = None,
) -> go.Figure:
    """The chart for ``result`` with a vertical line on ``selected`` (the slider's date) and,
    where ``query`` is another day of the curve, a dotted line and a point on it there."""
    curve = result.curve
    dates = pd.to_datetime(curve["date"])
    fig = go.Figure()
    if np.isfinite(curve["ndvi_p10"]).any():
        fig.add_trace(
            go.Scatter(
                x=dates,
                y=curve["ndvi_p90"],
                mode="lines",
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                name="p90",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=dates,
                y=curve["ndvi_p10"],
                mode="lines",
                line={"width": 0},
                fill="tonexty",
                fillcolor=BAND_COLOUR,
                name="p10–p90",
                hoverinfo="skip",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=dates,
            y=curve["ndvi"],
            mode="lines+markers",
            line={"color": CURVE_COLOUR, "width": 2},
            marker={"size": 3},
            name=f"Reconstructed ({result.request.method})",
            text=[
                _hover_text(*row)
                for row in zip(
                    curve["days_to_clear"],
                    curve["clear_fraction"],
                    curve["ndvi_p10"],
                    curve["ndvi_p90"],
                    strict=True,
                )
            ],
            hovertemplate="%{x|%Y-%m-%d}: NDVI %{y:.3f}%{text}<extra></extra>",
        )
    )
    whole, partly, cloudy = acquisition_points(curve)
    for days, name, marker in (
        (whole, CLEAR_NAME, {"color": OBSERVED_COLOUR, "size": 8}),
        # hollow: the mean of the part seen, not the field's value (review 30: the demo's
        # 2018-10-28, 62 % clear, read as a green-up to 0.70 on a field half bare)
        (partly, PARTLY_NAME, PARTLY_MARKER),
    ):
        fig.add_trace(
            go.Scatter(
                x=pd.to_datetime(days["date"]),
                y=days["observed_ndvi"],
                mode="markers",
                marker=marker,
                name=name,
                customdata=np.round(days["clear_fraction"].to_numpy() * 100),
                hovertemplate="%{x|%Y-%m-%d}: observed %{y:.3f}, the mean of the %{customdata:.0f}"
                " % of the field seen clear<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=pd.to_datetime(cloudy["date"]),
            y=cloudy["ndvi"],
            mode="markers",
            marker={"color": CLOUDY_COLOUR, "size": 8, "symbol": "x"},
            name=CLOUDY_NAME,
            customdata=np.round(cloudy["clear_fraction"].to_numpy() * 100),
            hovertemplate="%{x|%Y-%m-%d}: cloudy (%{customdata:.0f} % clear)<extra></extra>",
        )
    )
    if show_reference and not result.reference.empty:
        fig.add_trace(
            go.Scatter(
                x=pd.to_datetime(result.reference["date"]),
                y=result.reference["ndvi"],
                mode="lines",
                line={"color": REFERENCE_COLOUR, "dash": "dash", "width": 1.5},
                name="Whittaker reference",
                hoverinfo="skip",
            )
        )
    if query is not None and query != selected:
        _mark_query(fig, curve, query)
    stamp = pd.Timestamp(selected)
    _day_line(fig, stamp, {"color": SELECTED_COLOUR, "width": 2})
    fig.add_annotation(
        x=stamp,
        y=1,
        yref="paper",
        text=selected.isoformat(),
        showarrow=False,
        # inside the plot's top edge: above it, the date hid under the tool bar (which a touch
        # screen always shows) near the period's end (review 25)
        yanchor="top",
        bgcolor="rgba(255,255,255,0.8)",
        font={"color": SELECTED_COLOUR},
    )
    fig.update_layout(
        height=380,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        yaxis={"title": "NDVI", "range": [-0.1, 1.0]},
        xaxis={"title": None, **_day_range(result.first_day, result.last_day)},
        legend={"orientation": "h", "y": -0.15},
        hovermode="closest",
        clickmode="event+select",
    )
    # NDVI's axis stays put (review 25: on a phone, where a drag pans, a swipe up the chart
    # moved the y axis to -1.3..-0.2 and the curve out of sight); the days can still be zoomed
    # and panned. (Streamlit turns a chart whose points can be clicked to dragmode "pan"
    # whatever the layout says; on a touch screen the page keeps a finger from it, so that a
    # swipe scrolls the page and a tap selects: app.widgets.screen.CHART_TOUCH.)
    fig.update_yaxes(fixedrange=True)
    return fig


def _day_line(fig: go.Figure, stamp: pd.Timestamp, line: dict[str, object]) -> None:
    """A vertical line over the whole plot's height on ``stamp``."""
    fig.add_shape(type="line", x0=stamp, x1=stamp, y0=0, y1=1, yref="paper", line=line)


def _mark_query(fig: go.Figure, curve: pd.DataFrame, query: dt.date) -> None:
    """The Query date's day on the chart: a dotted line and a point on the curve, where the
    day is one of the curve's (its value is the one the Query date shows)."""
    row = curve[pd.to_datetime(curve["date"]) == pd.Timestamp(query)]
    if row.empty or not np.isfinite(row["ndvi"].iloc[0]):
        return
    stamp = pd.Timestamp(query)
    _day_line(fig, stamp, {"color": QUERY_COLOUR, "width": 1.5, "dash": "dot"})
    fig.add_trace(
        go.Scatter(
            x=[stamp],
            y=[float(row["ndvi"].iloc[0])],
            mode="markers",
            marker={
                "color": "rgba(255, 255, 255, 0.9)",
                "size": 12,
                "symbol": "diamond",
                "line": {"color": QUERY_COLOUR, "width": 2},
            },
            name=QUERY_NAME,
            hovertemplate="%{x|%Y-%m-%d} (Query date): NDVI %{y:.3f}<extra></extra>",
        )
    )


def query_on_chart(result: SeasonResult) -> dt.date | None:
    """The Query date's day as its panel shows it (a day outside the frames: the nearest
    one), or None before one is chosen."""
    day = widget_value(Key.QUERY)
    return within_frames(result, day) if isinstance(day, dt.date) else None


def acquisition_points(curve: pd.DataFrame) -> tuple[pd.DataFrame, ...]:
    """The curve's acquisition days, as the chart draws them: clear (its observation a point),
    partly clear (its clear part's observation a hollow point) and cloudy (the field's value
    a cross; also a day at least half clear with no NDVI observed)."""
    acquired = curve[np.isfinite(curve["clear_fraction"])]
    seen = acquired[acquired["clear_fraction"] >= OBSERVED_MIN_CLEAR_FRACTION]
    seen = seen[np.isfinite(seen["observed_ndvi"])]
    whole = seen[seen["clear_fraction"] >= WHOLLY_CLEAR_FRACTION]
    return whole, seen.drop(whole.index), acquired.drop(seen.index)


def ndvi_chart(result: SeasonResult, selected: dt.date) -> None:
    """Draw the chart with the reference toggle; a click selects the clicked date."""
    show_reference = st.toggle(
        "Whittaker reference",
        value=True,
        key=str(Key.REFERENCE),
        help="A smooth curve through the clear observations alone (the Whittaker smoother, a "
        "standard method; its smoothing chosen by cross-validation), to compare with.",
    )

    def on_select() -> None:
        day = clicked_day(widget_value(Key.CHART))
        if day is not None:
            select_day(result, day)

    st.plotly_chart(
        ndvi_figure(result, selected, show_reference=show_reference, query=query_on_chart(result)),
        key=str(Key.CHART),
        on_select=on_select,
        selection_mode="points",
        config={"displaylogo": False},
        alt=chart_alt(result),
    )
    st.caption(NDVI_SCALE + (BAND_MEANING if np.isfinite(result.curve["ndvi_p10"]).any() else ""))
    marks = season_marks(result.curve)
    if marks is not None:
        st.markdown(season_text(marks))


EDGE_DAYS = 5
"""A peak this close to the period's start or end (Sentinel-2's revisit) is said to be there."""


def season_text(marks: SeasonMarks) -> str:
    """The season's peak, green-up and decline in a line, with the windows the band allows
    (review 30: the page answered none of an agronomist's first questions)."""

    def short(day: dt.date) -> str:
        return day.strftime("%m-%d")

    def crossing(name: str, mark: Crossing | None, moving: str) -> str:
        if mark is None:
            return f"{name}: none in the period"
        window = (
            ""
            if mark.earliest == mark.latest
            else f", between {short(mark.earliest)} and {short(mark.latest)} by the band"
        )
        away = mark.days_to_clear
        data = (
            ""
            if away is None
            else ", seen clear that day"
            if away == 0
            else f", {away} d from clear data"
        )
        return f"{name} **{mark.day}** ({moving} {mark.low:.2f}{window}{data})"

    band = (
        f", p10-p90 {marks.peak_low:.2f}-{marks.peak_high:.2f}"
        if np.isfinite(marks.peak_low) and marks.peak_high > marks.peak_low
        else ""
    )
    seen = "observed" if marks.peak_observed else "reconstructed"
    if (marks.peak_day - marks.first_day).days <= EDGE_DAYS:
        seen += "; at the period's start: the crop may have peaked before it"
    elif (marks.last_day - marks.peak_day).days <= EDGE_DAYS:
        seen += "; at the period's end: the crop may still be growing"
    return (
        f"**Season**: peak **{marks.peak:.2f}** on **{marks.peak_day}** ({seen}{band}); "
        + crossing("green-up", marks.green_up, "half-way up from")
        + "; "
        + crossing("decline", marks.decline, "half-way down to")
        + f". Half-way dates, as TIMESAT's; a rise or fall under {MIN_AMPLITUDE:g} NDVI is not "
        "counted; with two crops in the period, the one with the higher peak."
    )


def chart_alt(result: SeasonResult) -> str:
    """What the chart shows, for a screen reader (review 25: it had no name), and where the
    same values are as text."""
    band = " with its p10-p90 band" if np.isfinite(result.curve["ndvi_p10"]).any() else ""
    return (
        f"Chart of the field's NDVI by day, {result.first_day} to {result.last_day}{band}, "
        "the clear observations as points. The same values are in the NDVI curve (CSV) "
        "download; the Query date reads any one day."
    )


BAND_MEANING = (
    " The shaded band (p10-p90) is the range the field's value falls in 8 times in 10 by the "
    "model's reckoning; fitted to the field (Settings), it is scaled by how far the day lies "
    "from clear data. On a day seen whole and clear it has no width: the observation is kept "
    "as it is, and the sensor's own error is not in the band."
)


def clicked_day(event: Any) -> dt.date | None:
    """The date of the first point of a plotly selection event, or None."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError, AttributeError):
        return None
    for point in points or []:
        x = point.get("x") if isinstance(point, dict) else None
        if isinstance(x, str) and len(x) >= 10:
            try:
                return dt.date.fromisoformat(x[:10])
            except ValueError:
                continue
    return None


def _distance_text(days: object) -> str:
    """The hover line on how far a day's value is from clear data (field median)."""
    if days is None or pd.isna(days):
        return "most of the field never seen clear"
    if int(days) == 0:
        return "seen clear that day"
    return f"nearest clear observation {int(days)} d away"


def _hover_text(days: object, clear: float, low: float, high: float) -> str:
    """What the curve's hover says under a day's value (from its second line on): its band,
    and how much of the field was seen that day or how far it is from clear data (review 30:
    a 62 % clear day read "seen clear that day", and the band was in no hover)."""
    lines = []
    if np.isfinite(low) and np.isfinite(high):
        lines.append(f"p10-p90 {low:.3f}-{high:.3f}")
    if np.isfinite(clear) and OBSERVED_MIN_CLEAR_FRACTION <= clear < WHOLLY_CLEAR_FRACTION:
        lines.append(f"{clear:.0%} of the field seen clear that day, the rest reconstructed")
    else:
        lines.append(_distance_text(days))
    return "".join(f"<br>{line}" for line in lines)


MIN_AXIS_DAYS = 7
"""The time axis spans at least this many days: a period of a day or two was drawn in
fractions of a millisecond ("23:59:59.9995"; browser review)."""


def _day_range(first: dt.date, last: dt.date) -> dict[str, object]:
    """Plotly x-axis settings that show at least :data:`MIN_AXIS_DAYS` around a short period,
    in days (nothing for a longer one: Plotly's own range)."""
    span = (last - first).days
    if span >= MIN_AXIS_DAYS:
        return {}
    pad = (MIN_AXIS_DAYS - span) / 2
    start = pd.Timestamp(first) - pd.Timedelta(days=pad)
    end = pd.Timestamp(last) + pd.Timedelta(days=pad)
    return {"range": [start, end], "tickformat": "%b %d", "dtick": 86_400_000}
