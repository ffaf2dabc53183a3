"""The period panel: start and end dates (default: the last 12 months) and the Run button."""

from __future__ import annotations

import datetime as dt

import streamlit as st

from app.state import Key, PageState, default_period, set_widget_value

SENTINEL2_START = dt.date(2015, 6, 23)
"""Launch of Sentinel-2A: no earlier period makes sense."""
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
    # One above the other: side by side, the sidebar cut the dates to "2018/03/0".
    today = dt.date.today()
    dates = {"min_value": SENTINEL2_START, "max_value": today, "format": DATE_FORMAT}
    st.date_input("Start", key=str(Key.START), **dates)
    st.date_input("End", key=str(Key.END), **dates)
    clicked = st.button("Run", type="primary", disabled=state.field is None, width="stretch")
    if state.field is None:
        st.caption("Draw, upload or pick a field first.")
    return clicked
