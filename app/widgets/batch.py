"""Every field of an uploaded file at once ("Process all fields"): the batch of
``python -m core batch`` run from the page, its progress, a table of how each field went and a
ZIP of their NDVI curves and frames.

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
from app.state import BatchJob, Key, PageState, Upload, page_state, widget_value
from app.text import plain
from app.widgets.settings import RunSettings
from app.widgets.status import say_failure
from core.batch import (
    FAILED,
    NOT_DONE,
    OK,
    SKIPPED,
    BatchRequest,
    UploadBatch,
    same_outputs,
)
from core.config import Settings
from core.errors import FieldFlowError
from core.export import safe_file_stem
from core.progress import duration_text

WATCH_EVERY_S = 1.0
"""How often a batch's progress is redrawn (a number: Streamlit's "magic" draws bare strings)."""
STATUS_WORDS = {OK: "done", SKIPPED: "done earlier", FAILED: "failed", NOT_DONE: "not done"}
"""How the table names each status (the ZIP's summary.csv keeps the command line's words)."""


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
        "two at a time (the cores are shared with Runs); the page shows a table of how each "
        "went and offers their NDVI curves and frames as one ZIP. Fields already done with "
        "the same file and settings are not done again.",
    )


def _request(state: PageState) -> None:
    state.batch_requested = True


def current_request(chosen: RunSettings) -> BatchRequest | None:
    """The batch the sidebar's period and settings describe now (None without a period)."""
    start, end = widget_value(Key.START), widget_value(Key.END)
    if not isinstance(start, dt.date) or not isinstance(end, dt.date) or end < start:
        return None
    return BatchRequest(
        start=start.isoformat(),
        end=end.isoformat(),
        method=chosen.method,
        options=chosen.options,
        max_cloud_cover=chosen.max_cloud_cover,
    )


def start_batch(state: PageState, chosen: RunSettings, settings: Settings) -> None:
    """Start the batch asked for by :func:`batch_offer` (after the sidebar drew the period
    and the settings it uses)."""
    state.batch_requested = False
    pending = state.pending_upload
    if pending is None:
        return
    start, end = widget_value(Key.START), widget_value(Key.END)
    if isinstance(start, dt.date) and isinstance(end, dt.date) and end < start:
        state.say("error", f"The period ends ({end}) before it starts ({start}): swap the dates.")
        return
    only = frozenset(c.index for c in pending.candidates)
    try:
        request = current_request(chosen)  # None without a period: nothing to start
        if request is None:
            return
        key = services.start_batch(pending.data, pending.name, request, settings, only)
    except FieldFlowError as exc:
        state.say("error", str(exc))
        return
    state.batch = BatchJob(key, pending.name, pending.data, request, only)
    state.batch_done = None


def batch_panel(state: PageState, chosen: RunSettings, settings: Settings) -> None:
    """The running batch's progress (with a Stop button), or the last one's outcome."""
    job = state.batch
    if job is not None:
        if st.button("Stop processing the fields", key=str(Key.BATCH_STOP)):
            try:
                state.batch_done = services.stop_batch(
                    job.key, job.data, job.name, job.request, settings, job.only
                )
            except FieldFlowError as exc:
                state.say("error", str(exc))
            state.batch = None
            st.rerun()
        follow_batch(job.key, settings)
    elif state.batch_done is not None:
        batch_outcome(state, state.batch_done, current_request(chosen))


@st.fragment(run_every=WATCH_EVERY_S)
def follow_batch(key: str, settings: Settings) -> None:
    """The batch's progress, redrawn on a timer; the whole page once it has ended."""
    state = page_state()
    job = state.batch
    if job is None or job.key != key:
        return
    try:
        done = services.watch_batch(key, job.data, job.name, job.request, settings, job.only)
        if done is None:
            return
    except Exception as exc:
        say_failure(state, exc)
    else:
        state.batch_done = done
    state.batch = None
    st.rerun()


def outcome_headline(done: UploadBatch) -> str:
    """``farm.geojson, 2018-05-01 to 2018-06-15, model: 3 fields in 48 s: 2 done, 1
    failed.``"""
    request = done.request
    parts = [
        f"{done.count(status)} {STATUS_WORDS[status]}"
        for status in (OK, SKIPPED, FAILED, NOT_DONE)
        if done.count(status)
    ]
    fields = f"{len(done.rows)} field{'s' if len(done.rows) != 1 else ''}"
    took = "stopped" if done.stopped else f"in {duration_text(done.seconds)}"
    return (
        f"{done.name}, {request.start} to {request.end}, {request.method}: {fields} {took}: "
        f"{', '.join(parts) or 'none'}."
    )


def outcome_table(done: UploadBatch) -> pd.DataFrame:
    """How each field went, as the page shows it (the ZIP's summary.csv has every column):
    shares in percent, NDVI to two decimals; the model's measure only with the model. Why a
    field failed is said under the table, where it is not cut off."""

    def number(value: float | None, text: str) -> str:
        return "" if value is None or not math.isfinite(value) else text.format(value)

    rows = done.rows
    table = pd.DataFrame(
        {
            "Field": [r.name for r in rows],
            "Status": [STATUS_WORDS.get(r.status, r.status) for r in rows],
            "S2 scenes": [number(r.scenes_s2, "{:.0f}") for r in rows],
            "Clear (mean)": [number(r.clear_fraction_mean, "{:.0%}") for r in rows],
            "Outside the imagery": [number(r.outside_imagery, "{:.0%}") for r in rows],
            "Most days from clear data": [number(r.days_to_clear_max, "{:.0f}") for r in rows],
            "NDVI peak": [number(r.ndvi_peak, "{:.2f}") for r in rows],
            "Peak date": [r.ndvi_peak_date for r in rows],
            "Green-up": [r.green_up_date for r in rows],
            "Decline": [r.decline_date for r in rows],
            "Model error / better baseline's": [
                number(r.model_vs_baseline, "{:.2f}") for r in rows
            ],
            "The same on the NDVI curve": [
                number(r.model_ndvi_vs_baseline, "{:.2f}") for r in rows
            ],
            "Seconds": [number(r.seconds, "{:.1f}") if r.status == OK else "" for r in rows],
        }
    )
    if not any(r.outside_imagery for r in rows):  # said only where some field has such a part
        table = table.drop(columns="Outside the imagery")
    if all(r.model_vs_baseline is None for r in rows):
        table = table.drop(columns="Model error / better baseline's")
    if all(r.model_ndvi_vs_baseline is None for r in rows):
        table = table.drop(columns="The same on the NDVI curve")
    return table


def archive_name(done: UploadBatch) -> str:
    """``farm_2018-05-01_2018-06-15_model.zip``: which file, period and method it holds."""
    request = done.request
    stem = safe_file_stem(Path(done.name).stem, "fields")
    return f"{stem}_{request.start}_{request.end}_{safe_file_stem(request.method, 'method')}.zip"


def batch_outcome(state: PageState, done: UploadBatch, now: BatchRequest | None) -> None:
    """How each field went, as a table, why some failed, and the ZIP of the outputs; said to
    be for other inputs where the sidebar's period or settings have changed since."""
    box = st.container(border=True)
    box.markdown(f"**{plain(outcome_headline(done))}**")
    if now is not None and same_outputs(now) != same_outputs(done.request):
        box.info(
            f"These are for {done.request.start} to {done.request.end} with "
            f"{done.request.method} and its settings then; the sidebar now asks for something "
            "else: press Process all again for those."
        )
    box.dataframe(outcome_table(done), hide_index=True, width="stretch")
    for row in done.rows:
        if row.status == FAILED:
            box.caption(f"{plain(row.name)} failed: {plain(row.error)}")
    if done.left_out:
        left_out = plain(", ".join(done.left_out))
        box.caption(f"Not batched, being no polygons: {left_out}.")
    if done.stopped and done.count(NOT_DONE):
        box.caption(
            "Stopped: the fields not done are left out of the ZIP; processing the same file "
            "with the same settings again does only them."
        )
    box.caption(_archive_caption(done))
    _open_offer(state, done, box)
    left, right = box.columns(2)
    with left:
        st.download_button(
            "All fields (ZIP)",
            data=done.archive,
            file_name=archive_name(done),
            mime="application/zip",
            key=str(Key.BATCH_ZIP),
        )
    with right:
        if st.button("Dismiss", key=str(Key.BATCH_CLEAR)):
            state.batch_done = None
            st.rerun()


def _archive_caption(done: UploadBatch) -> str:
    """What the ZIP holds, as it was made."""
    if not done.done:
        return (
            "No field was done: the ZIP holds summary.csv (why each failed) and batch.json "
            "(what was asked) only."
        )
    per_field = "ndvi.csv and frames.tif (its cloud-free frames as GeoTIFF)"
    if not done.frames_included:
        per_field = (
            "ndvi.csv (the frames weigh too much for the page: `python -m core batch` writes them)"
        )
    return (
        "The ZIP holds summary.csv (every column), batch.json (what was asked), "
        "all_fields_ndvi.csv (every field's curve in one table) and, in a folder per field "
        f"done, its {per_field}."
    )


def _open_offer(state: PageState, done: UploadBatch, box: DeltaGenerator) -> None:
    """A field of the batch, chosen, is Run here (as choosing it in the sidebar and pressing
    Run would)."""
    pending = state.pending_upload
    offered = {c.index for c in pending.candidates} if pending is not None else set()
    rows = {
        index: row.name
        for index, row in zip(done.indices, done.rows, strict=False)
        if index in offered and row.status in (OK, SKIPPED)
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
        "choosing it in the sidebar and pressing Run; it is computed anew, as long as a Run "
        "takes: the batch keeps its files, not the page's pictures).",
    )


def _open(state: PageState) -> None:
    index = st.session_state.get(str(Key.BATCH_OPEN))
    if index is None:
        return
    st.session_state[str(Key.UPLOAD_CHOICE)] = index
    st.session_state[str(Key.BATCH_OPEN)] = None
    state.run_requested = True
