"""The field panel: jump to a location, upload an outline, pick the demo, see the field.

Drawing happens on the map (:mod:`app.widgets.map`); :func:`accept_drawing` turns a drawing into
the field. Every bad input ends as a message the user can act on (the core's
:class:`~core.errors.FieldFlowError` text) and leaves the page usable.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from app import services
from app.state import LOCATION_ZOOM, Key, PageState, Upload, widget_value
from app.text import plain
from app.widgets.batch import batch_offer
from app.widgets.map import drawing_fingerprint
from core.config import Settings
from core.demo import choose_source, demo_cube_path
from core.errors import FieldFlowError
from core.field import field_from_drawing, read_upload
from core.land import field_swapped_hint, swapped_hint
from core.location import corners_polygon, parse_corners, parse_lat_lon

UPLOAD_TYPES = ["geojson", "json", "zip", "kml", "kmz", "gpkg"]


def field_panel(state: PageState, settings: Settings) -> None:
    """The sidebar section "Field"."""
    st.subheader("1 · Field")
    st.caption(
        "Draw it on the map (polygon or rectangle tool), type its corners, upload it "
        "(GeoJSON, zipped shapefile, KML/KMZ or GeoPackage), or try the demo."
    )
    _location_box(state)
    _corners_box(state, settings)
    _upload(state, settings)
    _demo(state, settings)
    _field_summary(state)


def accept_drawing(state: PageState, drawing: dict[str, Any], settings: Settings) -> bool:
    """Make a new map drawing the field; True when the state changed (a rerun is due)."""
    fingerprint = drawing_fingerprint(drawing)
    if fingerprint == state.handled_drawing:
        return False
    state.handled_drawing = fingerprint
    try:
        field = field_from_drawing(drawing, max_area_ha=settings.max_area_ha)
    except FieldFlowError as exc:
        state.say("error", f"The drawn shape cannot be used: {exc}")
        return True
    state.set_field(field, "drawn on the map")
    state.say("success", f"Field drawn: {field.area_ha:,.2f} ha. Pick the period and press Run.")
    return True


def _location_box(state: PageState) -> None:
    def go() -> None:
        text = str(widget_value(Key.LOCATION, "") or "")
        if not text.strip():
            return
        try:
            lat, lon = parse_lat_lon(text)
        except FieldFlowError as exc:
            state.say("error", str(exc))
            return
        state.map_center, state.map_zoom = (lat, lon), LOCATION_ZOOM
        state.fold_requested = True  # on a phone, the map moved under the sidebar
        swapped = swapped_hint(lat, lon)
        if swapped is not None:  # the map went there; say why it may be the wrong place
            state.say(
                "warning",
                f"{swapped}. Go to takes latitude first, then longitude (e.g. '51.05, 3.02').",
            )

    st.text_input(
        "Go to (lat, lon)",
        key=str(Key.LOCATION),
        placeholder="51.05, 3.02",
        help="Latitude and longitude in decimal degrees, latitude first (51.05, 3.02), or in "
        "degrees and minutes with N/S/E/W (51°03'N 3°01'E); press Enter to move the map there. "
        "Place names are not looked up.",
        on_change=go,
    )


def _corners_box(state: PageState, settings: Settings) -> None:
    """The field typed as its corners: the way to a field of one's own without drawing (with
    the keyboard alone, review 25; or from corners walked with a GPS)."""

    def use() -> None:
        text = str(widget_value(Key.CORNERS, "") or "")
        try:
            drawing = corners_polygon(parse_corners(text))
            field = field_from_drawing(
                drawing, name="Typed field", max_area_ha=settings.max_area_ha
            )
        except FieldFlowError as exc:
            state.say("error", f"The corners typed cannot be used: {exc}")
            return
        state.set_field(field, "typed corners")
        state.fold_requested = True  # on a phone, the field on the map lies under the sidebar
        area = f"{field.area_ha:,.2f} ha"
        state.say("success", f"Field typed: {area}. Pick the period and press Run.")
        lon, lat = field.centroid
        swapped = swapped_hint(lat, lon)
        if swapped is not None:
            state.say("warning", f"The field's centre, {swapped}: type latitude first.")

    with st.expander("Type the field's corners"):
        st.text_area(
            "Corners (lat, lon), one per line",
            key=str(Key.CORNERS),
            placeholder="51.0501, 3.0201\n51.0503, 3.0224\n51.0489, 3.0226\n51.0487, 3.0203",
            help="Each corner as in Go to: latitude first, decimal degrees or degrees and "
            "minutes with N/S/E/W; one per line (or separated by ';'), in order around the "
            "field. For a field of your own without drawing: with the keyboard alone, or from "
            "corners walked with a GPS.",
        )
        st.button("Use these corners", on_click=use)


def _upload(state: PageState, settings: Settings) -> None:
    uploaded = st.file_uploader(
        "Upload field",
        type=UPLOAD_TYPES,
        key=str(Key.UPLOAD) + (f"-{state.uploads_cleared}" if state.uploads_cleared else ""),
        help="GeoJSON, zipped shapefile (.zip with .shp/.shx/.dbf/.prj), KML/KMZ or "
        "GeoPackage. With several polygons you choose one.",
    )
    if uploaded is None:
        if state.handled_upload is not None and state.field_origin.startswith("uploaded ("):
            # The file was taken out with the uploader's x: its field goes with it (a drawing
            # or the demo made since stays), as Clear field empties the uploader.
            state.clear_field()
            state.say("info", "The uploaded file was removed, and its field with it.")
        state.pending_upload = state.upload_error = state.handled_upload = None
        return
    if uploaded.file_id != state.handled_upload:
        state.handled_upload = uploaded.file_id
        state.pending_upload = state.upload_error = None
        _read_upload(state, settings, uploaded.file_id, uploaded.name, uploaded.getvalue())
    if state.upload_error:
        st.error(state.upload_error)
    pending = state.pending_upload
    if pending is not None and pending.file_id == uploaded.file_id:
        _choose_feature(state, settings, pending)


def _read_upload(
    state: PageState, settings: Settings, file_id: str, name: str, data: bytes
) -> None:
    """Read an upload: one polygon becomes the field, several wait for a choice."""
    try:
        source = read_upload(data, name)  # in a process of its own, once
        polygons = [
            c for c in source.candidates() if c.geometry_type in ("Polygon", "MultiPolygon")
        ]
        if len(polygons) > 1:
            state.pending_upload = Upload(file_id, name, data, polygons, source)
            state.clear_field()  # Run waits for the choice, not runs the field before it
            state.show_candidates(polygons)
            return
        index = polygons[0].index if polygons else None
        field = source.field(index=index, max_area_ha=settings.max_area_ha)
    except FieldFlowError as exc:
        state.upload_error = f"{plain(name)} cannot be used: {plain(exc)}"
        return
    state.set_field(field, f"uploaded ({name})")
    state.say(
        "success",
        f"Field '{plain(field.name)}' loaded from {plain(name)}: {field.area_ha:,.2f} ha.",
    )


def _choose_feature(state: PageState, settings: Settings, pending: Upload) -> None:
    labels = {
        c.index: f"{c.name} ({c.area_ha:,.2f} ha)" if c.area_ha is not None else c.name
        for c in pending.candidates
    }
    choice = st.selectbox(
        f"{plain(pending.name)} holds {len(labels)} polygons: which is the field?",
        options=list(labels),
        format_func=labels.get,
        index=None,
        key=str(Key.UPLOAD_CHOICE),
        placeholder="Choose a field",
    )
    batch_offer(state, pending)
    if choice is None:
        return
    try:
        field = pending.source.field(index=int(choice), max_area_ha=settings.max_area_ha)
    except FieldFlowError as exc:
        st.error(str(exc))
        return
    if state.field is None or state.field.key != field.key:
        state.set_field(field, f"uploaded ({pending.name})")


def _demo(state: PageState, settings: Settings) -> None:
    def use_demo() -> None:
        try:
            preset = services.demo(str(demo_cube_path(settings)))
        except FieldFlowError as exc:  # FIELDFLOW_DEMO_CUBE names no usable demo cube
            state.say("error", str(exc))
            return
        reachable = services.stac_available(settings.stac_api_url)
        try:
            source = choose_source(
                preset,
                stac_url=settings.stac_api_url,
                stac_available=reachable,
                prefer_offline=bool(widget_value(Key.OFFLINE_DEMO, False)),
            )
        except FieldFlowError as exc:
            state.say("error", str(exc))
            return
        state.set_field(preset.field, "demo", demo=source)
        before = (widget_value(Key.START), widget_value(Key.END))
        st.session_state[str(Key.START)] = preset.start
        st.session_state[str(Key.END)] = preset.end
        period = ""
        if before != (preset.start, preset.end):  # the user's own dates are replaced: say so
            period = f" The period is now the demo's, {preset.start} to {preset.end}."
        state.say("info", f"{source.message}{period} Press Run.")

    st.button("Demo field", on_click=use_demo, help="A real crop parcel in West Flanders, 2018.")
    st.checkbox(
        "Use the offline demo cube",
        key=str(Key.OFFLINE_DEMO),
        help="Read the demo from the shared cube file instead of the STAC API (used "
        "automatically when the STAC API does not answer). Taken when Demo field is pressed: "
        "press it again after changing this.",
    )


def _field_summary(state: PageState) -> None:
    field = state.field
    if field is None:
        if state.pending_upload is None:  # else the choice above says what to do; on a
            st.info("No field yet.")  # phone this box had pushed Run below the fold
        return
    repaired = " (outline repaired)" if field.repaired else ""
    origin = plain(state.field_origin)  # "uploaded (FILE NAME)"
    st.success(f"**{plain(field.name)}**: {field.area_ha:,.2f} ha, {origin}{repaired}")
    swapped = field_swapped_hint(field.centroid)
    if swapped is not None:  # said while the field stays: a Run would find no scenes
        st.warning(swapped)
    if st.button("Clear field"):
        state.clear_field()
        state.uploads_cleared += 1  # a new, empty uploader: the same file can be picked again
        state.pending_upload = state.upload_error = state.handled_upload = None
        st.rerun()
