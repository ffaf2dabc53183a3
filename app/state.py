"""The page's session state, in one typed place.

Each browser session has its own :class:`PageState` (stored under one key of
``st.session_state``) and its own widget values (keys in :class:`Key`). Nothing is shared
between sessions except the caches in :mod:`app.services`, which are keyed by the field's
outline, so one user never sees another's field or result.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import shapely
import streamlit as st

from core.batch import BatchRequest, UploadBatch
from core.demo import DemoSource
from core.field import Candidate, Field, FieldFile
from core.location import zoom_for_bounds
from core.season import SeasonResult

if TYPE_CHECKING:
    from app.services import RunPanel

DEFAULT_CENTER: tuple[float, float] = (50.85, 4.35)
"""Where the map opens (lat, lon): Belgium."""
DEFAULT_ZOOM = 7
LOCATION_ZOOM = 16
"""The zoom of a place gone to (the Go to box, the map's "my location"): a field fills the map."""
_STATE_KEY = "fieldflow_page"


class Key(StrEnum):
    """Widget keys: every widget with a key uses one of these."""

    LOCATION = "location_text"
    CORNERS = "corners_text"
    UPLOAD = "upload_file"
    UPLOAD_CHOICE = "upload_choice"
    OFFLINE_DEMO = "offline_demo"
    START = "period_start"
    END = "period_end"
    METHOD = "method"
    MODEL = "model_checkpoint"
    REMOVE_MODEL = "remove_model"
    SAMPLES = "samples"
    STEPS = "steps"
    ADAPT = "adapt_steps"
    CALIBRATE = "calibrate_field"
    BLEND = "blend_field"
    SCREEN = "screen_haze"
    SCREEN_SCENES = "screen_scenes"
    DEVICE = "device"
    MAX_CLOUD = "max_cloud_cover"
    DATE = "timeline_date"
    QUERY = "query_date"
    QUERY_TIFF = "query_geotiff"
    SLIDER_TIFF = "slider_geotiff"
    OVERLAY = "map_overlay"
    REFERENCE = "show_reference"
    CHART = "ndvi_chart"
    MAP = "field_map"
    SWITCH_METHOD = "switch_method"
    TUNE_NAME = "tune_name"
    TUNE_STEPS = "tune_steps"
    TUNE_START = "tune_start"
    TUNE_STOP = "tune_stop"
    BATCH_START = "batch_start"
    BATCH_STOP = "batch_stop"
    BATCH_CLEAR = "batch_clear"
    BATCH_ZIP = "batch_zip"
    BATCH_OPEN = "batch_open"


@dataclass
class Message:
    """A message for the top of the page."""

    kind: str
    """"error", "warning", "info" or "success"."""
    text: str
    details: BaseException | None = None
    """An unexpected error behind the message, shown folded ("Technical details")."""


@dataclass
class Upload:
    """An uploaded file that holds several polygons, waiting for the user's choice."""

    file_id: str
    name: str
    data: bytes
    candidates: list[Candidate]
    source: FieldFile
    """Its features as read once (in a process of their own): the choice takes one from
    here, not by reading the file again on every rerun."""


@dataclass(frozen=True)
class BatchJob:
    """A batch of an uploaded file this session started ("Process all fields")."""

    key: str
    """Its job's key (app.services.start_batch)."""
    name: str
    data: bytes
    """The uploaded file, to read back what a stopped batch finished."""
    request: BatchRequest
    only: frozenset[int]
    """The feature positions batched: the polygons the page offered."""


@dataclass
class PageState:
    """Everything the page remembers between reruns of one session."""

    field: Field | None = None
    """The current field."""
    field_origin: str = ""
    """How it was given: "drawn on the map", "uploaded (name)", "demo"."""
    demo_source: DemoSource | None = None
    """Where the demo's data comes from, while the field is the demo field."""
    result: SeasonResult | None = None
    """The result of the last Run, while its inputs are unchanged."""
    running: str | None = None
    """The request key of a Run started and not ended: it computes as a job of its own, which
    the page follows from a fragment on a timer while the rest of the page stays live; cleared
    when the Run ends or fails, and its job left (stopped, unless another session waits for
    it) when its inputs change or the field is cleared."""
    last_run: RunPanel | None = None
    """The panel of the Run that just ended (:class:`app.services.RunPanel`), shown once."""
    messages: list[Message] = dataclasses.field(default_factory=list)
    """Shown once at the top of the page, then cleared."""
    map_center: tuple[float, float] = DEFAULT_CENTER
    map_zoom: int = DEFAULT_ZOOM
    handled_drawing: str | None = None
    """Fingerprint of the last map drawing turned into a field (the map returns it again on
    every rerun)."""
    handled_upload: str | None = None
    """File id of the last upload read."""
    pending_upload: Upload | None = None
    """An upload with several polygons, until one is chosen."""
    upload_error: str | None = None
    """Why the current upload cannot be used, shown under the uploader while it stays."""
    tuning: str | None = None
    """The key of the fine-tuning this session started (app.widgets.tuning), while it runs: a
    job of its own, followed from a fragment on a timer; it goes on if the page is left."""
    made_models: set[str] = dataclasses.field(default_factory=set)
    """The paths of the models this session's region button made: the page may remove them
    where the server lets a page remove only its own (``FIELDFLOW_MODEL_REMOVAL=own``)."""
    batch: BatchJob | None = None
    """The batch of an uploaded file this session started ("Process all fields",
    app.widgets.batch), while it runs: a job of its own, followed from a fragment."""
    batch_done: UploadBatch | None = None
    """The last batch's outcome, shown until dismissed or a new one starts."""
    batch_requested: bool = False
    """"Process all fields" was pressed: started after the sidebar has drawn the settings."""
    uploads_cleared: int = 0
    """How many times Clear field emptied the uploader: its key changes with it (a file left
    in it beside "No field yet." could not be picked again; browser review)."""
    fold_requested: bool = False
    """The Go to box moved the map: on a phone the sidebar that covers it is folded."""
    run_requested: bool = False
    """A Run asked for by a button other than Run (e.g. "Run again with linear
    interpolation"), started on the next rerun as if Run had been pressed."""

    def set_field(self, new: Field, origin: str, *, demo: DemoSource | None = None) -> None:
        """Make ``new`` the field, centre the map on it and forget a result for another one
        and the error of an earlier upload (the field no longer comes from that file)."""
        if self.field is None or self.field.key != new.key:
            self.result = None
        self.upload_error = None
        self.field = new
        self.field_origin = origin
        self.demo_source = demo
        lon, lat = new.centroid
        self.map_center = (lat, lon)
        self.map_zoom = zoom_for_bounds(new.bounds)

    def show_candidates(self, candidates: Sequence[Candidate]) -> None:
        """Centre the map on the polygons of an upload the user is to choose from."""
        outlines = [c.outline for c in candidates if c.outline is not None]
        if not outlines:
            return
        west, south, east, north = shapely.union_all(outlines).bounds
        self.map_center = ((south + north) / 2, (west + east) / 2)
        self.map_zoom = zoom_for_bounds((west, south, east, north))

    def clear_field(self) -> None:
        """Forget the field and its result (a Run still going is stopped by the page, which
        finds its inputs gone)."""
        self.field = None
        self.field_origin = ""
        self.demo_source = None
        self.result = None

    def say(self, kind: str, text: str, details: BaseException | None = None) -> None:
        """Queue a message for the top of the page."""
        self.messages.append(Message(kind, text, details))


def page_state() -> PageState:
    """This session's :class:`PageState` (created on first use)."""
    if _STATE_KEY not in st.session_state:
        st.session_state[_STATE_KEY] = PageState()
    return st.session_state[_STATE_KEY]


def widget_value(key: Key, default: object = None) -> object:
    """The current value of a keyed widget (``default`` before it was drawn)."""
    return st.session_state.get(str(key), default)


def set_widget_value(key: Key, value: object) -> None:
    """Set a keyed widget's value; only before it is drawn in this run (or in a callback)."""
    st.session_state[str(key)] = value


def forget_widget(key: Key) -> None:
    """Drop a widget's value so it starts from its default next time."""
    st.session_state.pop(str(key), None)


def default_period(today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """The last 12 months, ending today."""
    end = today or dt.date.today()
    try:
        start = end.replace(year=end.year - 1) + dt.timedelta(days=1)
    except ValueError:  # 29 February
        start = end.replace(year=end.year - 1, day=28) + dt.timedelta(days=1)
    return start, end
