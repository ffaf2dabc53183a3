"""FieldFlow's page: field and period in the sidebar, the map and the season's results in the
main area. Start with ``streamlit run app/main.py`` from the project folder.

This file only lays the page out; the widgets live in :mod:`app.widgets`, the cached core calls
in :mod:`app.services`, the session state in :mod:`app.state`, and all the work in :mod:`core`.
The map and everything that depends on the selected date form one ``st.fragment``: moving the
date slider, switching the map layer or clicking the chart reruns only that part, and nothing
is recomputed (the result holds every frame).
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` puts only app/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import services  # noqa: E402
from app.config import AppConfig  # noqa: E402
from app.state import Key, PageState, page_state, widget_value  # noqa: E402
from app.text import plain  # noqa: E402
from app.widgets.batch import batch_panel, start_batch  # noqa: E402
from app.widgets.chart import ndvi_chart  # noqa: E402
from app.widgets.downloads import downloads_row  # noqa: E402
from app.widgets.field import accept_drawing, field_panel  # noqa: E402
from app.widgets.map import field_map  # noqa: E402
from app.widgets.period import period_panel  # noqa: E402
from app.widgets.screen import (  # noqa: E402
    fold_sidebar_if_covering,
    page_scripts,
    page_style,
)
from app.widgets.settings import RunSettings, settings_panel  # noqa: E402
from app.widgets.status import (  # noqa: E402
    result_summary,
    run_panel,
    say_failure,
    show_messages,
)
from app.widgets.timeline import (  # noqa: E402
    date_slider,
    forget_selection,
    frames_row,
    query_panel,
    reset_selection,
)
from app.widgets.tuning import tuning_panel  # noqa: E402
from core.config import Settings  # noqa: E402
from core.errors import FieldFlowError  # noqa: E402
from core.season import SeasonRequest  # noqa: E402

OVERLAYS = {"rgb": "True colour", "ndvi": "NDVI", "none": "None"}
WATCH_EVERY_S = 0.5  # how often a Run's progress is redrawn while it computes (a string here
# would be drawn on the page: Streamlit's "magic" writes a script's bare expressions)


def main() -> None:
    """Build the page."""
    st.set_page_config(page_title="FieldFlow", page_icon="🌾", layout="wide")
    page_style()
    state = page_state()
    try:
        settings = services.settings()
    except FieldFlowError as exc:  # a server set up with a wrong value: say which, start nothing
        st.error(str(exc))
        st.stop()
    with st.sidebar:
        st.title("FieldFlow")
        field_panel(state, settings)
        run_clicked = period_panel(state) or state.run_requested
        state.run_requested = False
        offline = state.demo_source is not None and state.demo_source.mode == "offline"
        run_settings = settings_panel(settings, offline=offline)
    batch_started = state.batch_requested
    if batch_started:
        start_batch(state, run_settings, settings)

    st.markdown("### Cloud-free Sentinel-2 for your field")
    request = current_request(state, run_settings)
    drop_stale_result(state, request, settings, quiet=run_clicked)
    leave_changed_run(state, request, settings)
    # One container above the map for progress, messages and the summary: whatever it holds,
    # the map keeps its place in the page, so the browser never remounts it (a remount would
    # lose the view and any drawing not yet sent).
    with st.container():
        # on a phone, the progress, result, map or a refusal of a sidebar control come into
        # view (review 25: Go to's refusal and the demo's note lay under the sidebar)
        refused = any(m.kind == "error" for m in state.messages)
        if run_clicked or batch_started or state.fold_requested or refused:
            fold_sidebar_if_covering()
            state.fold_requested = False
        if run_clicked:
            start_run(state, request, settings)
        if state.running is not None and request is not None:
            follow_run(request, settings)
        show_messages(state)
        if state.last_run is not None:
            fold_sidebar_if_covering()  # opened again meanwhile: the result it hid has come
            run_panel(state.last_run)
            state.last_run = None
        if state.result is not None:
            result_summary(state.result, state)
        batch_panel(state, run_settings, settings)
    workspace(AppConfig.from_env(), settings)
    tuning_panel(state, settings, run_settings)
    page_scripts()


def current_request(state: PageState, chosen: RunSettings) -> SeasonRequest | None:
    """The request the inputs describe now (None without a field or with a reversed period)."""
    start, end = widget_value(Key.START), widget_value(Key.END)
    if state.field is None or not isinstance(start, dt.date) or not isinstance(end, dt.date):
        return None
    demo = state.demo_source
    offline = demo is not None and demo.mode == "offline"
    return SeasonRequest(
        field=state.field,
        start=start,
        end=end,
        method=chosen.method,
        options=chosen.options,
        # the offline cube keeps every scene: a limit there changed nothing but the result's
        # key, a new computation of the same result (review 23)
        max_cloud_cover=None if offline else chosen.max_cloud_cover,
        cube_path=demo.cube_path if offline else None,
    )


def drop_stale_result(
    state: PageState, request: SeasonRequest | None, settings: Settings, *, quiet: bool = False
) -> None:
    """Forget the result when the field, period or settings no longer match it (``quiet``:
    without asking for Run, which is starting)."""
    result = state.result
    if result is None:
        return
    if request is None or request.key(settings.stac_api_url) != result.key:
        state.result = None
        forget_selection()
        if not quiet:
            state.say("info", "The field, period or settings changed: press Run for new results.")


def leave_changed_run(state: PageState, request: SeasonRequest | None, settings: Settings) -> None:
    """Stop following a Run whose inputs changed (or whose field was cleared) while it
    computed, with a word; its job stops unless another session waits for it."""
    if state.running is None:
        return
    if request is not None and request.key(settings.stac_api_url) == state.running:
        return
    services.leave_run(state.running)
    state.running = None
    state.say("info", "The field, period or settings changed during the Run: press Run again.")


def start_run(state: PageState, request: SeasonRequest | None, settings: Settings) -> None:
    """Start the Run of the inputs (or show its kept result at once)."""
    if request is None:
        state.say("error", "Draw, upload or pick a field first, then press Run.")
        return
    if request.end < request.start:
        state.say(
            "error",
            f"The period ends ({request.end}) before it starts ({request.start}): swap the dates.",
        )
        return
    state.running = request.key(settings.stac_api_url)
    with failures_said(state):
        finished = services.start_run(request, settings)
        if finished is not None:
            ended(state, finished)


@st.fragment(run_every=WATCH_EVERY_S)
def follow_run(request: SeasonRequest, settings: Settings) -> None:
    """The Run's progress, redrawn on a timer while it computes; the whole page is redrawn
    once it has ended. A fragment, so the page's script is not held by the Run: a field drawn
    or a place typed meanwhile is taken at once."""
    state = page_state()
    if state.running != request.key(settings.stac_api_url):
        return  # ended or left since the page drew this
    with failures_said(state):
        finished = services.watch_run(request, settings)
        if finished is None:
            return
        ended(state, finished)
    st.rerun()  # the whole page: the results below, the panel above


def ended(state: PageState, finished: services.Finished) -> None:
    state.running = None
    state.result = finished.result
    state.last_run = finished.panel
    reset_selection(finished.result)


@contextmanager
def failures_said(state: PageState) -> Iterator[None]:
    """A failed Run ends as a message (and the panel of where it stopped), never a traceback."""
    try:
        yield
    except services.RunStopped as stop:
        state.running = None
        state.last_run = stop.panel
        say_failure(state, stop.cause)
    except Exception as exc:
        state.running = None
        say_failure(state, exc)


@st.fragment
def workspace(config: AppConfig, settings: Settings) -> None:
    """The map and, after a Run, the date slider, frames, chart, query date and downloads."""
    state = page_state()
    result = state.result
    index = None
    overlay = None
    if result is not None:
        selected = widget_value(Key.DATE)
        index = result.index_of(selected) if isinstance(selected, dt.date) else 0
        frame = result.frames[index]
        layer = widget_value(Key.OVERLAY, "rgb")
        overlay = {"rgb": frame.overlay_rgb_png, "ndvi": frame.overlay_ndvi_png}.get(str(layer))
    pending = state.pending_upload
    drawing = field_map(
        config,
        field=state.field,
        candidates=pending.candidates if pending is not None and state.field is None else (),
        center=state.map_center,
        zoom=state.map_zoom,
        overlay_png=overlay,
        overlay_bounds=result.overlay_bounds if result is not None else None,
    )
    if drawing is not None and accept_drawing(state, drawing, settings):
        st.rerun()
    if result is None:
        st.caption(
            "The frames, the NDVI curve and the downloads appear here when the Run ends; the "
            "map and the inputs stay usable meanwhile (changing the field, period or settings "
            "stops the Run)."
            if state.running is not None
            else "Pick the period and press **Run**, under the dates at the foot of the sidebar "
            "(on a phone, open it with » at the top left)."
            if state.field is not None
            else f"{plain(pending.name)} holds {len(pending.candidates)} polygons, dashed on "
            "the map: "
            "choose the field in the sidebar, then press **Run**; or press **Process all "
            f"{len(pending.candidates)} fields** there for every one of them."
            if pending is not None
            else "Draw the field with the polygon or rectangle tool (left edge of the map; "
            "the round button under them goes to where you stand), upload its outline, or "
            "press **Demo field** in the sidebar (on a phone, open it with » at the top left); "
            "then press **Run**. Drawing needs a mouse or a finger; with the keyboard alone, "
            "type the field's corners in the sidebar or upload its outline."
        )
        return
    st.radio(
        "Map layer",
        list(OVERLAYS),
        format_func=OVERLAYS.get,
        key=str(Key.OVERLAY),
        horizontal=True,
    )
    index = date_slider(result)
    frames_row(result, index)
    chart_column, query_column = st.columns([2, 1])
    with chart_column:
        ndvi_chart(result, result.days[index])
    with query_column:
        query_panel(result)
    downloads_row(result, result.days[index])


main()
