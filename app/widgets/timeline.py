"""The "Date" slider and the frames of the selected date; the "Query date" for any day.

Everything the slider shows comes from the precomputed :class:`~core.season.SeasonResult`;
only the query date of a day off the timeline is reconstructed (once, then cached).
"""

from __future__ import annotations

import datetime as dt
import math

import streamlit as st

from app import services
from app.state import Key, forget_widget, set_widget_value, widget_value
from app.widgets.downloads import frame_button
from app.widgets.period import DATE_FORMAT, EARLIEST, LATEST
from core.curve import OBSERVED_MIN_CLEAR_FRACTION
from core.errors import FieldFlowError
from core.render import UNCERTAINTY_RANGE, colour_bar
from core.season import WHOLLY_CLEAR_FRACTION, DayView, FrameView, SeasonResult, TimelineDate

CLEAR_ENOUGH = OBSERVED_MIN_CLEAR_FRACTION
"""An acquisition with this share of the field seen clear or more is one "Next clear" goes to,
and is counted in the result's summary: the chart's clear and partly clear points."""
FRAME_MIN_WIDTH_PX = 140
"""The narrowest a frame of the row is drawn before the row wraps: five fit beside the sidebar
on a laptop, two on a phone (where Streamlit's columns would stack them one a row, 1,800 px of
pictures before the chart)."""
QUERY_MIN_WIDTH_PX = 110
"""The same for the Query date's two pictures, in the chart's side column."""


def clear_days(result: SeasonResult) -> list[dt.date]:
    """The timeline's dates with a mostly clear acquisition, in order."""
    return [e.day for e in result.timeline if (e.clear_fraction or 0.0) >= CLEAR_ENOUGH]


def default_day(result: SeasonResult) -> dt.date:
    """The most recent date with a mostly clear acquisition, else the last date."""
    clear = clear_days(result)
    return clear[-1] if clear else result.timeline[-1].day


def reset_selection(result: SeasonResult) -> None:
    """Select the default date on the slider and in the query date (for a new result)."""
    day = default_day(result)
    set_widget_value(Key.DATE, day)
    set_widget_value(Key.QUERY, day)


def forget_selection() -> None:
    """Drop the slider's and the query date's values (their result is gone)."""
    for key in (Key.DATE, Key.QUERY):
        forget_widget(key)


def within_frames(result: SeasonResult, day: dt.date) -> dt.date:
    """``day``, or the nearest day with a frame where it lies outside them (what the Query
    date shows for it)."""
    return min(max(day, result.first_day), result.last_day)


def select_day(result: SeasonResult, day: dt.date) -> None:
    """Select ``day``: the slider goes to the nearest timeline date, the query date to the day."""
    set_widget_value(Key.DATE, result.days[result.index_of(day)])
    set_widget_value(Key.QUERY, within_frames(result, day))


SLIDER_STYLE = (
    f"<style>.st-key-{Key.DATE} [data-testid='stSliderTickBar'] {{ display: none; }}</style>"
)
"""The slider's end labels left out: the period's two ends, each with its long label, did not
fit half a phone's width, wrapped and ran under the frames (review 25); the selected date's
label stays, and the period's ends are in the Run's headline."""


def step_targets(result: SeasonResult, day: dt.date) -> dict[str, dt.date | None]:
    """The dates the step buttons go to from ``day`` (a timeline date): the timeline's previous
    and next date, and the previous and next mostly clear acquisition; None where there is
    none."""
    days = result.days
    index = days.index(day)
    clear = clear_days(result)
    return {
        "previous clear": max((d for d in clear if d < day), default=None),
        "previous": days[index - 1] if index > 0 else None,
        "next": days[index + 1] if index + 1 < len(days) else None,
        "next clear": min((d for d in clear if d > day), default=None),
    }


STEP_LABELS = {
    "previous clear": "« Previous clear",
    "previous": "‹ Previous",
    "next": "Next ›",
    "next clear": "Next clear »",
}
"""Each says where it goes (review 26: "« Clear" and "Clear »" were both read as "Clear",
beside the sidebar's "Clear field")."""
STEP_HELP = {
    "previous clear": "The previous acquisition with half the field or more seen clear",
    "previous": "The previous date of the timeline",
    "next": "The next date of the timeline",
    "next clear": "The next acquisition with half the field or more seen clear",
}


def date_slider(result: SeasonResult) -> int:
    """The "Date" slider over the timeline, with buttons that step it (review 25: on a phone
    a year's dates lie a few pixels apart, too close for a finger); returns the selected
    index."""
    labels = {entry.day: entry.label for entry in result.timeline}
    if widget_value(Key.DATE) not in labels:
        set_widget_value(Key.DATE, default_day(result))
    st.html(SLIDER_STYLE)
    day = st.select_slider(
        "Date",
        options=result.days,
        format_func=lambda d: labels[d],
        key=str(Key.DATE),
        help="Every Sentinel-2 acquisition (clear and cloudy) and a date every "
        f"{result.request.every_days} days. Nothing is recomputed when you move it. The "
        "buttons below step it a date at a time, or to the previous or next clear view.",
    )
    row = st.container(horizontal=True, gap="small")
    for name, target in step_targets(result, day).items():
        row.button(
            STEP_LABELS[name],
            key=f"step_{name.replace(' ', '_')}",
            help=STEP_HELP[name] + (f" ({target.isoformat()})." if target else ": none."),
            disabled=target is None,
            on_click=set_widget_value,
            args=(Key.DATE, target),
        )
    return result.days.index(day)


def frames_row(result: SeasonResult, index: int) -> None:
    """The selected date side by side: as acquired, reconstructed, NDVI, uncertainty, radar
    (a grid: all in one row on a wide screen, two a row on a phone instead of one)."""
    frame = result.frames[index]
    sampled = frame.uncertainty_png is not None
    grid = st.grid(5 if sampled else 4, min_column_width=FRAME_MIN_WIDTH_PX)
    with grid.cell():
        _raw(frame, result.timeline[index])
    with grid.cell():
        _picture(frame.rgb_png, _recon_caption(result, frame), "Reconstructed true colour")
        if frame.blank_fraction >= 0.005:
            st.caption(_blank_caption(result, frame))
    with grid.cell():
        _picture(frame.ndvi_png, "Reconstructed NDVI", "Reconstructed NDVI")
        _legend("ndvi", "-0.2", "NDVI", "1.0")
    if sampled:
        with grid.cell():
            _picture(frame.uncertainty_png, "Uncertainty: NDVI p90 − p10", "Uncertainty")
            # the ramp's top colour is every spread from its end up (review 30: "0.3" read as
            # the largest, where a cloudy day's pixels reach 0.6)
            _legend("uncertainty", "0", "p90 − p10", f"{UNCERTAINTY_RANGE[1]:g} or more")
    with grid.cell():
        _radar(result, index)


def query_panel(result: SeasonResult) -> None:
    """The "Query date" picker: any day of the period, its frame and the field's NDVI."""
    if not isinstance(widget_value(Key.QUERY), dt.date):
        set_widget_value(Key.QUERY, default_day(result))
    # The inputs' widest bounds, as the period's: a day typed outside the bounds shows in the
    # box while the page keeps the old one (bounded by the period, review 22; by the
    # acquisitions before, with a bare "outside allowed range"). Outside the frames, the
    # nearest is shown and said.
    day = st.date_input(
        "Query date",
        min_value=EARLIEST,
        max_value=LATEST,
        key=str(Key.QUERY),
        format=DATE_FORMAT,
        help=f"Any day from {result.first_day} to {result.last_day} (the period, within the "
        "Sentinel-2 acquisitions fetched for it): its reconstructed frame and the field's NDVI.",
    )
    if not isinstance(day, dt.date):
        return
    if not result.first_day <= day <= result.last_day:
        nearest = within_frames(result, day)
        if result.request.start <= day <= result.request.end:
            why = (
                "nothing can be reconstructed "
                f"{'before the first' if day < result.first_day else 'after the last'} "
                "acquisition"
            )
        else:
            why = f"it lies outside the period, {result.request.start} to {result.request.end}"
        st.caption(f"{day} has no frame: {why}, so {nearest} is shown.")
        day = nearest
    try:
        view = services.day_view(result.key, day, result)
    except FieldFlowError as exc:
        st.error(str(exc))
        return
    band = ""
    if math.isfinite(view.ndvi_p10) and math.isfinite(view.ndvi_p90):
        band = f"p10–p90: {view.ndvi_p10:.2f} – {view.ndvi_p90:.2f}"
    st.metric(
        f"Field NDVI on {day.isoformat()}",
        f"{view.ndvi:.3f}",
        help=NDVI_SCALE + (f" {band}: the range the value falls in 8 times in 10." if band else ""),
    )
    if band:
        st.caption(band)
    if math.isfinite(view.observed_ndvi):
        st.caption(observed_caption(view))
    elif math.isfinite(view.clear_fraction) and view.clear_fraction > 0:
        st.caption(
            f"Only {view.clear_fraction:.0%} of the field seen clear that day: too little to "
            "trust as an observation (the clear pixels of a mostly cloudy scene read low, at "
            "the clouds' edges), so the value is reconstructed."
        )
    elif math.isfinite(view.days_to_clear):
        st.caption(
            "No clear observation that day: reconstructed; the field's nearest clear "
            f"observations are a median {_days(view.days_to_clear)} away."
        )
    else:
        st.caption("No clear observation that day: reconstructed.")
    pair = st.grid(2, min_column_width=QUERY_MIN_WIDTH_PX)
    with pair.cell():
        _picture(view.rgb_png, "Reconstructed", "Query date true colour")
    with pair.cell():
        _picture(view.ndvi_png, "NDVI", "Query date NDVI")
    # review 30: a day looked up could not be downloaded; the row below gives the slider's
    frame_button(result, day, f"{day:%b %d} (GeoTIFF)", "the Query date", Key.QUERY_TIFF)


def _raw(frame: FrameView, entry: TimelineDate) -> None:
    if frame.raw_png is None:
        limit = entry.cloud_limit
        st.info(
            f"No Sentinel-2 acquisition on {frame.day.isoformat()}"
            + ("." if limit is None else f" under the {limit:g}% scene cloud limit.")
        )
        return
    clear = frame.clear_fraction or 0.0
    masked = "; ".join(f"{name} {share:.0%}" for name, share in frame.masked_as)
    _picture(
        frame.raw_png,
        f"Sentinel-2 as acquired: {clear:.0%} of the field clear (magenta: cloud mask"
        + (f": {masked}" if masked else "")
        + ")",
        "Sentinel-2 as acquired",
    )


def _recon_caption(result: SeasonResult, frame: FrameView) -> str:
    ndvi = f"field NDVI {frame.ndvi:.2f}" if math.isfinite(frame.ndvi) else "no NDVI"
    return (
        f"Reconstructed ({result.request.method}): {ndvi}, {frame.observed_fraction:.0%} observed"
    )


NDVI_SCALE = (
    "NDVI runs from about 0.1 over bare soil to 0.8-0.9 under a dense green crop; clouds and "
    "water read near or below 0."
)
"""What NDVI values mean, for a reader who has not met it (the chart's caption, the Query
date's help)."""


def _days(days: float) -> str:
    return "1 day" if round(days) == 1 else f"{days:.0f} days"


def observed_caption(view: DayView) -> str:
    """What was seen that day, told apart from the field's value where only part was clear."""
    clear = view.clear_fraction
    if not math.isfinite(clear) or clear >= WHOLLY_CLEAR_FRACTION:
        return f"Observed that day: {view.observed_ndvi:.3f} (the field seen clear)."
    return (
        f"Observed that day on the {clear:.0%} of the field seen clear: "
        f"{view.observed_ndvi:.3f}. The field's value above also counts the rest, "
        "reconstructed under the clouds."
    )


def _blank_caption(result: SeasonResult, frame: FrameView) -> str:
    method = result.request.method
    text = (
        f"Blank: {frame.blank_fraction:.0%} of the field, pixels with no clear observation "
        f"in the period (or outside the imagery) that {method} could draw from."
    )
    if method != "model":
        text += " The model fills pixels never clear from the pixels around them and the radar."
    return text


def _radar(result: SeasonResult, index: int) -> None:
    radar = result.radar_for(index)
    if radar is None:
        st.info("No Sentinel-1 frame for this field and period.")
        return
    gap = (radar.day - result.frames[index].day).days
    when = (
        "same day"
        if gap == 0
        else f"{abs(gap)} day{'s' if abs(gap) > 1 else ''} " + ("later" if gap > 0 else "earlier")
    )
    orbit = f", {radar.orbit}" if radar.orbit in ("ascending", "descending") else ""
    _picture(radar.png, f"Sentinel-1 VV, {radar.day.isoformat()} ({when}{orbit})", "Sentinel-1 VV")
    _legend("radar", "-25 dB", "VV", "0 dB")


def _picture(png: bytes, caption: str, alt: str) -> None:
    """A frame picture, kept as PNG (Streamlit would re-encode it as JPEG and blur the pixels)."""
    st.image(png, caption=caption, alt=alt, width="stretch", output_format="PNG")


def _legend(kind: str, low: str, name: str, high: str) -> None:
    with st.container(key=f"legend_{kind}"):  # no fullscreen button (app.widgets.screen)
        st.image(colour_bar(kind), alt=f"{name} colour scale", width="stretch", output_format="PNG")
        st.caption(f"{low} ← {name} → {high}")
