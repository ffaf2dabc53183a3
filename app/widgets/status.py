"""The top of the page: queued messages and a one-line summary of the current result."""

from __future__ import annotations

import streamlit as st

from app.services import RunPanel
from app.state import PageState
from core.season import SeasonResult


def show_messages(state: PageState) -> None:
    """Show and forget the queued messages."""
    shown = {
        "error": st.error,
        "warning": st.warning,
        "success": st.success,
        "info": st.info,
    }
    for message in state.messages:
        shown.get(message.kind, st.info)(message.text)
        if message.details is not None:
            with st.expander("Technical details"):
                st.exception(message.details)
    state.messages.clear()


def run_panel(panel: RunPanel) -> None:
    """How the Run that just ended went: its headline and stages, in a box."""
    box = st.container(border=True)
    box.markdown(f"**{panel.headline}**")
    for stage in panel.stages:
        box.caption(stage)


def result_summary(result: SeasonResult) -> None:
    """One line on what the result holds, its notes, and (folded) what the model fitted."""
    acquisitions = [e for e in result.timeline if e.acquired]
    clear = sum((e.clear_fraction or 0.0) >= 0.5 for e in acquisitions)
    request = result.request
    st.caption(
        f"**{request.field.name}** ({request.field.area_ha:,.2f} ha) · "
        f"{result.first_day} to {result.last_day} · {len(acquisitions)} Sentinel-2 "
        f"acquisitions ({clear} mostly clear) · {result.frames_loaded.get('s1', 0)} "
        f"Sentinel-1 frames · method: {request.method} · data: {result.source}"
    )
    for note in result.notes:
        st.caption(f"Note: {note}")
    if result.fits:
        with st.expander("What the model measured on this field"):
            for fit in result.fits:
                st.caption(fit)
