"""The period panel: start and end dates (default: the last 12 months) and the Run button."""

from __future__ import annotations

import datetime as dt

import streamlit as st

from app.state import Key, PageState, default_period, set_widget_value
from core.timeline import YEARS

SENTINEL2_START = dt.date(2015, 6, 23)
"""Launch of Sentinel-2A: no earlier period makes sense."""
EARLIEST = dt.date(YEARS[0], 1, 1)
LATEST = dt.date(YEARS[1], 12, 31)
"""The dates the inputs take: the command line's (:data:`core.timeline.YEARS`). A date typed
outside them shows in the box, outlined red, while Streamlit keeps the old value; with
2000-01-01 to a year ahead as bounds, a start typed as 1999 ran a period never shown (review
22). The line above Run says which period runs."""
DATE_FORMAT = "YYYY-MM-DD"
"""How the page's date inputs show dates: as the CSV and the slider write them."""


def period_panel(state: PageState) -> bool:
    """The sidebar section "Period" with the Run button; True when Run was clicked."""
    st.subheader("2 · Period")
    start, end = default_period()
    if str(Key.START) not in st.session_state:
        set_widget_value(Key.START, start)
    if str(Key.END) not in st.session_state:
        set_widget_value(Key.END, end)
    # One above the other: side by side, the sidebar cut the dates to "2018/03/0". Wide
    # bounds, said in words below: with Sentinel-2's launch and today as the bounds, the
    # browser showed a date typed outside them while the page silently kept the old one.
    today = dt.date.today()
    dates = {"min_value": EARLIEST, "max_value": LATEST, "format": DATE_FORMAT}
    start_day = st.date_input("Start", key=str(Key.START), **dates)
    end_day = st.date_input("End", key=str(Key.END), **dates)
    if isinstance(start_day, dt.date) and start_day < SENTINEL2_START:
        st.caption(f"Sentinel-2 images begin on {SENTINEL2_START}: the days before it have none.")
    if isinstance(end_day, dt.date) and end_day > today:
        st.caption("The days after today have no images yet: the Run ends at the last one.")
    if isinstance(start_day, dt.date) and isinstance(end_day, dt.date):
        st.caption(period_line(start_day, end_day))
    clicked = st.button("Run", type="primary", disabled=state.field is None, width="stretch")
    if state.field is None:
        st.caption("Draw, upload or pick a field first.")
    return clicked


def period_line(start: dt.date, end: dt.date) -> str:
    """What Run runs, in words: the dates the page holds (a date typed outside the inputs'
    bounds is not taken, though the box shows it)."""
    if end < start:
        return f"Run: {start} to {end}, which ends before it starts: swap the dates."
    days = (end - start).days + 1
    return f"Run: {start} to {end} ({days} day{'s' if days > 1 else ''})."
