"""The top of the page: queued messages and a one-line summary of the current result."""

from __future__ import annotations

import streamlit as st

from app.services import RunPanel
from app.state import Key, PageState
from app.text import plain
from app.widgets.settings import model_settings_text
from app.widgets.timeline import clear_days
from core.errors import FieldFlowError
from core.fetch import PERIOD_MARGIN_DAYS
from core.season import (
    BASELINE_NAMES,
    SeasonRequest,
    SeasonResult,
    method_choices,
)


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


def say_failure(state: PageState, exc: BaseException) -> None:
    """Queue what went wrong: our own errors in their words; anything else as a bug, not the
    user's doing, with the details folded (a Run, a training, a batch: never a traceback)."""
    if isinstance(exc, FieldFlowError):
        state.say("error", str(exc))
    else:
        state.say("error", f"Something unexpected went wrong ({type(exc).__name__}).", exc)


def run_panel(panel: RunPanel) -> None:
    """How the Run that just ended went: its headline, and its stages folded (the result
    below is what the user came for; on a laptop's screen the stages had pushed it out of
    sight)."""
    box = st.container(border=True)
    # A status (success; a stop is an alert, warning), which a screen reader reads out when it
    # appears (review 25: the Run's end was a plain paragraph, and nothing told a user who
    # cannot see the page that it had come).
    (box.warning if panel.stopped else box.success)(panel.headline)
    if panel.stages:
        with box.expander(f"Its stages ({len(panel.stages)})"):
            for stage in panel.stages:
                st.caption(stage)


def switch_method(state: PageState, method: str) -> None:
    """The button's callback (before the rerun, so the settings' selectbox shows the new
    method): choose ``method`` and ask for a Run of it."""
    st.session_state[str(Key.METHOD)] = method
    state.run_requested = True


def _radar_count(result: SeasonResult) -> str:
    frames = result.frames_loaded.get("s1", 0)
    if not frames:
        return "no Sentinel-1 frames"
    margin = f"the period's and the {PERIOD_MARGIN_DAYS} days either side"
    return f"{frames} Sentinel-1 frame{'s' if frames > 1 else ''} ({margin})"


def _model_settings(request: SeasonRequest) -> str:
    """ " (8 samples, the default ODE steps, tuned ...)" for a model Run, as it ran (review 23:
    nothing on the result said them)."""
    if request.method != "model":
        return ""
    options = request.options
    return f" ({model_settings_text(options.samples, options.steps, options.adapt_steps)})"


def result_summary(result: SeasonResult, state: PageState) -> None:
    """One line on what the result holds, its notes, and (folded) what the model fitted."""
    acquisitions = [e for e in result.timeline if e.acquired]
    clear = len(clear_days(result))
    request = result.request
    st.caption(
        f"**{plain(request.field.name)}** ({request.field.area_ha:,.2f} ha) · "
        f"{result.first_day} to {result.last_day} · {len(acquisitions)} Sentinel-2 "
        f"acquisition{'' if len(acquisitions) == 1 else 's'} in the period ({clear} with half "
        "the field or more seen clear) · "
        f"{_radar_count(result)} · method: "
        f"{request.method}{_model_settings(request)} · data: {result.source}"
        + (
            ""  # review 23: a series with scenes skipped read as a complete one
            if request.max_cloud_cover is None
            else f" · scenes over {request.max_cloud_cover:g} % cloud cover skipped"
        )
    )
    for warning in result.warnings:  # the model itself is suspect: not a note among others
        st.warning(warning)
    for note in result.notes:
        st.caption(f"Note: {note}")
    if result.better_method is not None and result.better_method in method_choices():
        st.button(
            f"Run again with {BASELINE_NAMES.get(result.better_method, result.better_method)}",
            key=str(Key.SWITCH_METHOD),
            on_click=switch_method,
            args=(state, result.better_method),
            help="It erred less than the model on this field's own clear pixels, hidden in "
            "turn (the note above). Sets Settings > Reconstruction method and runs again.",
        )
    if result.fits:
        folded = (
            "What the model measured on this field"
            if request.method == "model"
            else "Details of this Run"
        )
        with st.expander(folded):
            for fit in result.fits:
                st.caption(fit)
