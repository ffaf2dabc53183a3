"""Every field of an uploaded file at once ("Process all fields"): the batch of
``python -m core batch`` run from the page, its progress, a table of how each field went and a
ZIP of their NDVI curves.

A farm's parcel file holds many fields; the page otherwise takes one at a time.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from app import services
from app.state import Key, PageState, Upload, page_state, widget_value
from app.widgets.settings import RunSettings
from core.batch import FAILED, OK, SKIPPED, BatchRequest, UploadBatch
from core.config import Settings
from core.errors import FieldFlowError
from core.export import safe_file_stem
from core.progress import duration_text

WATCH_EVERY_S = 1.0
"""How often a batch's progress is redrawn (a number: Streamlit's "magic" draws bare strings)."""


def batch_offer(state: PageState, pending: Upload) -> None:
    """The sidebar's "Process all N fields" button, under the choice of one."""
    count = len(pending.candidates)
    st.button(
        f"Process all {count} fields",
        key=str(Key.BATCH_START),
        disabled=state.batch is not None,
        on_click=_request,
        args=(state,),
        help="Each field is fetched and reconstructed with the period and settings below, "
        "one after another (the cores are shared with Runs); the page shows a table of how "
        "each went and offers their NDVI curves as one ZIP. Fields already done with the same "
        "file and settings are not done again.",
    )


def _request(state: PageState) -> None:
    state.batch_requested = True


def start_batch(state: PageState, chosen: RunSettings, settings: Settings) -> None:
    """Start the batch asked for by :func:`batch_offer` (after the sidebar drew the period
    and the settings it uses)."""
    state.batch_requested = False
    pending = state.pending_upload
    start, end = widget_value(Key.START), widget_value(Key.END)
    if pending is None or not isinstance(start, dt.date) or not isinstance(end, dt.date):
        return
    if end < start:
        state.say("error", f"The period ends ({end}) before it starts ({start}): swap the dates.")
        return
    try:
        request = BatchRequest(
            start=start.isoformat(),
            end=end.isoformat(),
            method=chosen.method,
            options=chosen.options,
            max_cloud_cover=chosen.max_cloud_cover,
        )
        state.batch = services.start_batch(pending.data, pending.name, request, settings)
    except FieldFlowError as exc:
        state.say("error", str(exc))
        return
    state.batch_done = None


def batch_panel(state: PageState) -> None:
    """The running batch's progress (with a Stop button), or the last one's outcome."""
    if state.batch is not None:
        if st.button("Stop processing the fields", key=str(Key.BATCH_STOP)):
            services.stop_batch(state.batch)
            state.batch = None
            state.say(
                "info",
                "Stopped. The fields done so far are kept: processing the same file with the "
                "same settings again skips them.",
            )
            st.rerun()
        follow_batch(state.batch)
    elif state.batch_done is not None:
        batch_outcome(state, state.batch_done)


@st.fragment(run_every=WATCH_EVERY_S)
def follow_batch(key: str) -> None:
    """The batch's progress, redrawn on a timer; the whole page once it has ended."""
    state = page_state()
    if state.batch != key:
        return
    try:
        done = services.watch_batch(key)
        if done is None:
            return
    except FieldFlowError as exc:
        state.say("error", str(exc))
    except Exception as exc:  # a bug, not the user's doing: said, with the details folded
        state.say("error", f"Something unexpected went wrong ({type(exc).__name__}).", exc)
    else:
        state.batch_done = done
    state.batch = None
    st.rerun()


def outcome_table(done: UploadBatch) -> pd.DataFrame:
    """How each field went, as the page shows it (the ZIP's summary.csv has every column):
    shares in percent, NDVI to two decimals; the model's measure only with the model, the
    reasons only where a field failed."""

    def number(value: float | None, text: str) -> str:
        return "" if value is None or not math.isfinite(value) else text.format(value)

    rows = done.rows
    table = pd.DataFrame(
        {
            "Field": [r.name for r in rows],
            "Status": [r.status for r in rows],
            "S2 scenes": [number(r.scenes_s2, "{:.0f}") for r in rows],
            "Clear (mean)": [number(r.clear_fraction_mean, "{:.0%}") for r in rows],
            "Most days from clear data": [number(r.days_to_clear_max, "{:.0f}") for r in rows],
            "NDVI peak": [number(r.ndvi_peak, "{:.2f}") for r in rows],
            "Peak date": [r.ndvi_peak_date for r in rows],
            "Model error / better baseline's": [
                number(r.model_vs_baseline, "{:.2f}") for r in rows
            ],
            "Seconds": [number(r.seconds, "{:.1f}") for r in rows],
            "Why it failed": [r.error for r in rows],
        }
    )
    if all(r.model_vs_baseline is None for r in rows):
        table = table.drop(columns="Model error / better baseline's")
    if not any(r.error for r in rows):
        table = table.drop(columns="Why it failed")
    return table


def batch_outcome(state: PageState, done: UploadBatch) -> None:
    """How each field went, as a table, and the ZIP of the outputs."""
    box = st.container(border=True)
    parts = [f"{done.count(OK)} done"]
    if done.count(SKIPPED):
        parts.append(f"{done.count(SKIPPED)} done earlier")
    if done.count(FAILED):
        parts.append(f"{done.count(FAILED)} failed")
    box.markdown(
        f"**{done.name}: {len(done.rows)} features in {duration_text(done.seconds)}: "
        f"{', '.join(parts)}.**"
    )
    box.dataframe(outcome_table(done), hide_index=True, width="stretch")
    inside = "each field's NDVI curve (ndvi.csv" + (
        " and frames.tif, its cloud-free frames as GeoTIFF)" if done.frames_included else ")"
    )
    box.caption(
        f"The ZIP holds summary.csv (every column), all_fields_ndvi.csv (every field's curve in "
        f"one table) and {inside}, in a folder per field."
        + (
            ""
            if done.frames_included
            else " The frames weigh too much for the page: `python -m core batch` writes them."
        )
    )
    _open_offer(state, done, box)
    left, right = box.columns(2)
    with left:
        st.download_button(
            "All fields (ZIP)",
            data=done.archive,
            file_name=f"{safe_file_stem(Path(done.name).stem, 'fields')}-fields.zip",
            mime="application/zip",
            key=str(Key.BATCH_ZIP),
        )
    with right:
        if st.button("Dismiss", key=str(Key.BATCH_CLEAR)):
            state.batch_done = None
            st.rerun()


def _open_offer(state: PageState, done: UploadBatch, box: DeltaGenerator) -> None:
    """A field of the batch, chosen, is Run here (as choosing it in the sidebar and pressing
    Run would)."""
    pending = state.pending_upload
    offered = {c.index for c in pending.candidates} if pending is not None else set()
    rows = {
        index: row.name
        for index, row in zip(done.indices, done.rows, strict=False)
        if index in offered and row.status != FAILED
    }
    if not rows:
        return
    box.selectbox(
        "Look at one field here",
        options=list(rows),
        format_func=rows.get,
        index=None,
        placeholder="Choose a field to Run it here",
        key=str(Key.BATCH_OPEN),
        on_change=_open,
        args=(state,),
        help="Its frames, curve and downloads, as a Run of it shows them (the same as "
        "choosing it in the sidebar and pressing Run).",
    )


def _open(state: PageState) -> None:
    index = st.session_state.get(str(Key.BATCH_OPEN))
    if index is None:
        return
    st.session_state[str(Key.UPLOAD_CHOICE)] = index
    st.session_state[str(Key.BATCH_OPEN)] = None
    state.run_requested = True
