"""Batch pieces without a cluster: field ids, the request, resuming, outputs, summary, GPU
routing and the scheduler connection."""

from __future__ import annotations

import csv
import dataclasses
import gc
import io
import json
import os
import socket
import threading
import time
from pathlib import Path

import dask
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from pyproj import Transformer
from shapely.geometry import LineString, Polygon, box, mapping

from core import batch
from core.admission import PROCESS_GATE, Admission
from core.batch import (
    CURVE_FILE,
    FRAMES_FILE,
    MARKER_FILE,
    SUMMARY_COLUMNS,
    BatchField,
    BatchRequest,
    Fetched,
    FieldRow,
    completed_row,
    failure_message,
    frame_dates,
    list_fields,
    model_measures,
    reconstruct_task,
    summary_csv,
    unique_ids,
    write_field_outputs,
    write_marker,
)
from core.config import Settings
from core.cube import build_cube
from core.curve import CURVE_COLUMNS
from core.distributed import (
    HELD_CUBES,
    Cluster,
    ClusterError,
    check_scheduler_address,
    connect,
    field_worker,
    gpu_capacity,
    local_cluster,
    reconstruct_resources,
    reconstructor,
    scheduler_address,
    scheduler_details,
    submit_reconstruction,
)
from core.errors import FieldError, InputError, NoScenesError
from core.fetch import FetchResult
from core.field import Field
from core.grid import Grid
from core.reconstruct import ReconstructOptions, reconstruct
from tests.support.waiting import until

SETTINGS = Settings(stac_api_url="http://stac.test/api", cache_dir=Path("/nonexistent"))
GRID = Grid("EPSG:32631", 10.0, x0=500000.0, y0=5600120.0, width=12, height=12)
TIMES = np.array(
    ["2023-05-02T10:30", "2023-05-07T10:30", "2023-05-12T10:30", "2023-05-22T10:30"],
    dtype="datetime64[ns]",
)
TO_LONLAT = Transformer.from_crs(GRID.crs, "EPSG:4326", always_xy=True)


def lonlat_box(left: float, bottom: float, right: float, top: float) -> Polygon:
    """A UTM (EPSG:32631) rectangle as a lon/lat polygon."""
    ring = box(left, bottom, right, top).exterior.coords
    return Polygon([TO_LONLAT.transform(x, y) for x, y in ring])


# The field holds the centres of pixels rows 2..9, columns 2..9 (8 x 8 = 64 pixels).
FIELD = Field(lonlat_box(500021.0, 5600021.0, 500099.0, 5600099.0), "Test field")


def make_cube() -> object:
    """4 dates of a 12 x 12 grid: reflectance rising by 0.01 per date; date 2 all cloudy."""
    s2 = np.full((4, 10, 12, 12), 0.05, dtype=np.float32)
    s2[:, 6] = 0.30  # B08 (NIR)
    s2 += (np.arange(4, dtype=np.float32) * 0.01)[:, None, None, None]
    valid = np.ones((4, 12, 12), dtype=np.uint8)
    valid[2] = 0
    return build_cube(
        s2, TIMES, GRID.y, GRID.x, {"crs": GRID.crs, "resolution_m": 10.0}, valid=valid
    )


def fetch_result(cube: object | None = None) -> FetchResult:
    return FetchResult(
        cube=make_cube() if cube is None else cube,
        grid=GRID,
        scenes_found={"sentinel-2-l2a": 5, "sentinel-1-rtc": 3},
        frames_loaded={"s2": 4, "s1": 0},
        s1_status="none",
        s1_message="",
    )


REQUEST = BatchRequest(start="2023-05-01", end="2023-05-31", every_days=10)


# --- field ids and listing ---------------------------------------------------------------------


def test_unique_ids_are_safe_stable_and_case_insensitively_unique() -> None:
    labels = ["North", "north", None, "a/b c", "..", "North", "  "]
    assert unique_ids(labels) == [
        "North",
        "north-2",
        "feature-2",
        "a_b_c",
        "feature-4",
        "North-3",
        "feature-6",
    ]
    assert unique_ids(labels) == unique_ids(list(labels))  # same file, same ids (resuming)


def _write_geojson(path: Path, features: list[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _feature(geometry, **properties) -> dict:
    return {"type": "Feature", "geometry": mapping(geometry), "properties": properties}


def test_list_fields_default_ids_names_then_index_and_keeps_bad_features(tmp_path) -> None:
    outline = FIELD.geometry
    path = _write_geojson(
        tmp_path / "fields.geojson",
        [
            _feature(outline, name="West block", code="W1"),
            _feature(outline, code="X9"),  # no name-like attribute
            _feature(LineString([(4.0, 50.0), (4.01, 50.01)]), name="A ditch"),
            _feature(outline, Field="West block"),  # any case of a label key
        ],
    )
    fields = list_fields(path)
    assert [f.field_id for f in fields] == ["West_block", "feature-1", "A_ditch", "West_block-2"]
    assert [f.name for f in fields] == ["West block", "feature 1", "A ditch", "West block"]
    assert [f.index for f in fields] == [0, 1, 2, 3]
    assert fields[0].field is not None and fields[0].field.key == FIELD.key
    assert fields[2].field is None and "LineString" in fields[2].error


def test_list_fields_id_column_any_case_geojson_id_and_missing_values(tmp_path) -> None:
    outline = FIELD.geometry
    features = [_feature(outline, name="a", Parcel="P-1"), _feature(outline, name="b")]
    features[1]["id"] = "feat-7"
    path = _write_geojson(tmp_path / "fields.geojson", features)
    assert [f.field_id for f in list_fields(path, id_column="parcel")] == ["P-1", "feature-1"]
    assert [f.field_id for f in list_fields(path, id_column="id")] == ["feature-0", "feat-7"]
    with pytest.raises(InputError, match=r"no column 'crop'.*Parcel.*name"):
        list_fields(path, id_column="crop")


def test_list_fields_reads_a_geopackage_in_order_with_an_id_column(tmp_path) -> None:
    frame = gpd.GeoDataFrame(
        {"name": ["one", "two", "three"], "parcel_no": [101, 102, 101]},
        geometry=[FIELD.geometry] * 3,
        crs="EPSG:4326",
    )
    path = tmp_path / "fields.gpkg"
    frame.to_file(path, layer="parcels", driver="GPKG")
    fields = list_fields(path, id_column="PARCEL_NO")
    assert [f.field_id for f in fields] == ["101", "102", "101-2"]
    assert [f.name for f in fields] == ["one", "two", "three"]
    assert all(f.field is not None for f in fields)


def _parcels(path: Path) -> Path:
    """A GeoPackage of 300 strips of FIELD's size in a row, then a ditch, a self-crossing
    outline and one field too large for ``max_area_ha=5``: a farm's file, with its mistakes."""
    west, south, east, north = FIELD.bounds
    strips = [box(west + 0.002 * i, south, east + 0.002 * i, north) for i in range(300)]
    bad = [
        LineString([(4.0, 50.0), (4.01, 50.01)]),
        Polygon([(4.0, 50.0), (4.01, 50.01), (4.01, 50.0), (4.0, 50.01)]),
        box(4.0, 50.0, 4.05, 50.05),
    ]
    names = [f"strip {i}" for i in range(300)] + ["ditch", "bow tie", "estate"]
    frame = gpd.GeoDataFrame({"name": names}, geometry=strips + bad, crs="EPSG:4326")
    frame.to_file(path, layer="parcels", driver="GPKG")
    return path


def test_list_fields_reads_the_file_once_and_checks_each_feature_as_before(
    tmp_path, monkeypatch
) -> None:
    from core.field import field_from_file

    path = _parcels(tmp_path / "farm.gpkg")
    expected = []  # what list_fields made of each feature before (review 12, D8)
    for index in range(303):
        try:
            expected.append((field_from_file(path, index=index, max_area_ha=5.0), ""))
        except FieldError as exc:
            expected.append((None, str(exc)))
    reads = []
    read_file = gpd.read_file
    monkeypatch.setattr(gpd, "read_file", lambda *a, **k: reads.append(a) or read_file(*a, **k))
    fields = list_fields(path, max_area_ha=5.0)
    assert len(reads) == 1  # it read the file once, not once a feature (quadratic)
    assert [(f.field, f.error) for f in fields] == expected
    assert [f.index for f in fields] == list(range(303))
    assert fields[299].field_id == "strip_299" and fields[299].field.name == "strip 299"
    assert [f.field is None for f in fields[-3:]] == [True, True, True]
    assert "LineString" in fields[-3].error and "crosses itself" in fields[-2].error
    assert "above the limit of 5 ha" in fields[-1].error


def test_list_fields_reports_each_feature_checked_and_a_raise_stops_it(tmp_path) -> None:
    from core.batch import LISTING_STAGE

    path = _parcels(tmp_path / "farm.gpkg")
    told = []

    class Stop(Exception):
        pass

    def stop_at_five(stage: str, done: int, total: int) -> None:
        told.append((stage, done, total))
        if done == 5:
            raise Stop()  # as a job stopped by the page raises at its next report

    with pytest.raises(Stop):
        list_fields(path, progress=stop_at_five)
    assert told == [(LISTING_STAGE, n, 303) for n in range(6)]
    told.clear()
    assert len(list_fields(path, progress=lambda *t: told.append(t))) == 303
    assert told == [(LISTING_STAGE, n, 303) for n in range(304)]


# --- request -----------------------------------------------------------------------------------


def test_request_validates_and_normalises_and_its_fingerprint_ignores_the_device() -> None:
    request = BatchRequest(start="2023-5-1", end="2023-05-31T00:00")
    assert (request.start, request.end) == ("2023-05-01", "2023-05-31")
    with pytest.raises(InputError, match="every-days"):
        BatchRequest(start="2023-05-01", end="2023-05-31", every_days=0)
    with pytest.raises(InputError, match="ends"):
        BatchRequest(start="2023-05-31", end="2023-05-01")
    with pytest.raises(InputError, match="samples"):
        BatchRequest(start="2023-05-01", end="2023-05-31", options=ReconstructOptions(samples=0))
    cpu = BatchRequest(
        start="2023-05-01", end="2023-05-31", options=ReconstructOptions(device="cpu")
    )
    gpu = BatchRequest(
        start="2023-05-01", end="2023-05-31", options=ReconstructOptions(device="cuda")
    )
    assert cpu.fingerprint(FIELD, SETTINGS) == gpu.fingerprint(FIELD, SETTINGS)
    other = BatchRequest(start="2023-05-01", end="2023-05-31", method="whittaker")
    assert other.fingerprint(FIELD, SETTINGS) != cpu.fingerprint(FIELD, SETTINGS)
    # each of what makes the outputs makes another fingerprint, so that a resumed batch does
    # not keep a field's outputs made for another (review 29: the cloud limit left out passed)
    base = cpu.fingerprint(FIELD, SETTINGS)
    for change in (
        {"max_cloud_cover": 20.0},
        {"include_s1": False},
        {"every_days": 3},
        {"curve_every_days": 2},
        {"end": "2023-06-30"},
        {"options": ReconstructOptions(samples=4)},
    ):
        changed = dataclasses.replace(cpu, **change)
        assert changed.fingerprint(FIELD, SETTINGS) != base, change
    elsewhere = dataclasses.replace(SETTINGS, stac_api_url="http://other.test/api")
    assert cpu.fingerprint(FIELD, elsewhere) != base
    fingerprint = cpu.fingerprint(FIELD, SETTINGS)
    assert fingerprint == json.loads(json.dumps(fingerprint))  # plain JSON, compares after I/O
    assert fingerprint["field_key"] == FIELD.key
    assert fingerprint["stac_api_url"] == SETTINGS.stac_api_url


def test_a_model_retrained_in_place_is_another_request(tmp_path: Path) -> None:
    """A checkpoint file rewritten at the same path (a user's model trained again) must not
    let a batch skip fields made by the old weights."""
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"first weights")
    options = ReconstructOptions(checkpoint=mine)
    request = BatchRequest(start="2023-05-01", end="2023-05-31", method="model", options=options)
    before = request.fingerprint(FIELD, SETTINGS)
    assert before == request.fingerprint(FIELD, SETTINGS)
    mine.write_bytes(b"second weights")
    assert request.fingerprint(FIELD, SETTINGS) != before
    shipped = BatchRequest(start="2023-05-01", end="2023-05-31", method="model")
    assert shipped.fingerprint(FIELD, SETTINGS)["checkpoint_sha256"]  # the shipped file's
    linear = BatchRequest(start="2023-05-01", end="2023-05-31", method="linear")
    assert "checkpoint_sha256" not in linear.fingerprint(FIELD, SETTINGS)


def test_a_southern_fields_model_outputs_are_made_again_since_its_seasons_are_read_anew() -> None:
    """Since 2026-12-06 the model reads a field's dates half a year on south of the Tropic of
    Capricorn: its earlier outputs are stale; a northern field's, or a baseline's, are not."""
    south = Field(box(-60.5, -34.6, -60.49, -34.59), "Pampa")
    model = BatchRequest(start="2023-05-01", end="2023-05-31", method="model")
    assert model.fingerprint(south, SETTINGS)["southern_seasons"] is True
    assert "southern_seasons" not in model.fingerprint(FIELD, SETTINGS)
    linear = BatchRequest(start="2023-05-01", end="2023-05-31", method="linear")
    assert "southern_seasons" not in linear.fingerprint(south, SETTINGS)


def test_frame_dates_are_acquisitions_plus_regular_days_inside_the_cube_period() -> None:
    days = frame_dates(make_cube(), "2023-05-01", "2023-05-31", 10)
    # regular: 05-01 (before the first acquisition), 05-11, 05-21, 05-31 (after the last)
    expected = ["2023-05-02", "2023-05-07", "2023-05-11", "2023-05-12", "2023-05-21", "2023-05-22"]
    assert [str(d) for d in days.astype("datetime64[D]")] == expected
    assert days.dtype == np.dtype("datetime64[ns]")


# --- outputs and resuming ----------------------------------------------------------------------


def test_outputs_are_correct_and_the_marker_is_written_last(tmp_path, monkeypatch) -> None:
    replaced: list[str] = []
    real_replace = os.replace

    def spy(src, dst, *args, **kwargs):
        replaced.append(Path(dst).name)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", spy)
    folder = tmp_path / "field"
    fingerprint = REQUEST.fingerprint(FIELD, SETTINGS)
    row = write_field_outputs(
        FIELD, fetch_result(), REQUEST, folder, fingerprint, "field", "Test field"
    )
    assert replaced[-1] == MARKER_FILE
    assert set(replaced) == {FRAMES_FILE, CURVE_FILE, MARKER_FILE}

    with (folder / CURVE_FILE).open() as handle:
        curve = list(csv.DictReader(handle))
    assert list(curve[0]) == list(CURVE_COLUMNS)
    assert [r["date"] for r in curve][:2] == ["2023-05-02", "2023-05-03"]
    assert len(curve) == 21  # daily 05-02 .. 05-22 (the cube's period)
    # NDVI of date 0: (0.30 - 0.05) / (0.30 + 0.05) on all 64 field pixels
    assert float(curve[0]["ndvi"]) == pytest.approx(0.25 / 0.35, abs=1e-4)
    assert curve[0]["source"] == "observed" and float(curve[0]["clear_fraction"]) == 1.0
    with rasterio.open(folder / FRAMES_FILE) as src:
        assert src.count == 6 * 11
        assert src.transform == GRID.transform
        assert src.descriptions[0] == "2023-05-02 B02"

    assert row.status == "ok"
    assert (row.scenes_s2, row.scenes_s1, row.s1_status, row.frames) == (5, 3, "none", 6)
    assert row.clear_fraction_mean == pytest.approx(0.75)  # 3 of 4 dates clear
    assert row.outside_imagery == 0.0
    assert row.days_to_clear_max == max(int(r["days_to_clear"]) for r in curve)
    # NDVI rises with the date (both bands +0.01): (0.33 - 0.08) / 0.41 ~ 0.6098 is lower,
    # so the peak is on the first day.
    assert (row.ndvi_peak_date, round(row.ndvi_peak, 4)) == ("2023-05-02", 0.7143)
    # ... and it falls 0.10 over the period, past the 0.1 a decline needs: half-way down on
    # the first day at or under the level; no green-up before a peak on the first day
    values = [float(r["ndvi"]) for r in curve]
    level = (max(values) + min(values)) / 2
    assert max(values) - min(values) > 0.1
    assert row.green_up_date == ""
    falls = [r["date"] for r, v in zip(curve, values, strict=True) if v <= level]
    assert row.decline_date == falls[0]
    assert row.record()["decline_date"] == row.decline_date
    assert completed_row(folder, fingerprint) == FieldRow(
        **{**row.__dict__, "status": "skipped", "seconds": 0.0}
    )


@pytest.mark.parametrize(
    "damage", ["no marker", "changed output", "missing output", "other request", "bad json"]
)
def test_incomplete_outputs_are_not_skipped(tmp_path, damage) -> None:
    folder = tmp_path / "field"
    folder.mkdir()
    (folder / CURVE_FILE).write_text("date,ndvi\n2023-05-02,0.5\n")
    (folder / FRAMES_FILE).write_bytes(b"frames")
    fingerprint = REQUEST.fingerprint(FIELD, SETTINGS)
    row = FieldRow("field", "Test field", "ok", scenes_s2=5, frames=3, seconds=2.5)
    write_marker(folder, fingerprint, row)
    assert completed_row(folder, fingerprint) is not None
    if damage == "no marker":
        (folder / MARKER_FILE).unlink()
    elif damage == "changed output":
        (folder / FRAMES_FILE).write_bytes(b"FRAMES")  # same size, other bytes
    elif damage == "missing output":
        (folder / CURVE_FILE).unlink()
    elif damage == "other request":
        fingerprint = {**fingerprint, "end": "2023-06-30"}
    else:
        (folder / MARKER_FILE).write_text("{not json")
    assert completed_row(folder, fingerprint) is None


def test_a_failure_mid_way_leaves_no_marker_and_the_field_is_redone(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "field"
    fingerprint = REQUEST.fingerprint(FIELD, SETTINGS)
    write_field_outputs(FIELD, fetch_result(), REQUEST, folder, fingerprint, "field", "F")
    other = BatchRequest(start="2023-05-01", end="2023-05-31", every_days=3)
    other_print = other.fingerprint(FIELD, SETTINGS)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(batch, "write_curve_csv", broken)
    item = BatchField(0, "field", "F", FIELD)
    row = reconstruct_task(
        Fetched(fetch_result(), seconds=1.0), item, other, str(folder), other_print
    )
    assert row.status == "failed" and row.error.startswith("OSError: disk full. The outputs of")
    assert row.scenes_s2 == 5 and row.seconds >= 1.0
    assert not (folder / MARKER_FILE).exists()  # the old marker went first
    assert not (folder / FRAMES_FILE).exists()  # the partial output too (review 15), and
    assert completed_row(folder / "earlier", fingerprint) is not None  # the old ones kept
    assert completed_row(folder, fingerprint) is None and completed_row(folder, other_print) is None

    monkeypatch.undo()
    row = reconstruct_task(Fetched(fetch_result()), item, other, str(folder), other_print)
    assert row.status == "ok"
    assert completed_row(folder, other_print) is not None
    with rasterio.open(folder / FRAMES_FILE) as src:
        assert src.count == 11 * frame_dates(make_cube(), other.start, other.end, 3).size


def test_failed_fetch_and_failures_outside_fieldflow_are_reported(tmp_path) -> None:
    item = BatchField(2, "far", "Far away", FIELD)
    message = "No Sentinel-2 scenes cover the field."
    row = reconstruct_task(Fetched(None, message, 0.4), item, REQUEST, str(tmp_path), {})
    assert (row.status, row.error, row.seconds) == ("failed", message, 0.4)
    assert failure_message(NoScenesError(message)) == message
    assert failure_message(ValueError("bad value\n\nmore detail")) == "ValueError: bad value"
    # a message wrapped over lines is kept whole (review 17: Dask's was cut mid-sentence)
    dask_says = (
        "Error during deserialization of the task graph. This frequently\noccurs if the "
        "Scheduler and Client have different environments.\n\nFor more information, see ..."
    )
    assert failure_message(RuntimeError(dask_says)) == (
        "RuntimeError: Error during deserialization of the task graph. This frequently occurs "
        "if the Scheduler and Client have different environments."
    )
    assert len(failure_message(ValueError("x" * 1000))) == len("ValueError: ") + 300
    assert failure_message(KeyError()) == "KeyError"


def test_a_field_partly_outside_the_imagery_is_measured_on_the_rest_and_said(tmp_path) -> None:
    """The field's east half (columns 6..9 of 2..9) holds no data on any date, as past a swath
    edge: its figures are over the west half, and the summary says how much lies outside
    (review 5: the summary had no word for it)."""
    cube = make_cube()
    cube["s2"].values[:, :, :, 6:] = np.nan
    cube["valid"].values[:, :, 6:] = 0
    cube["valid"].values[0, :, :4] = 0  # date 0 cloudy on columns 0..3: 2 of the 4 imaged
    fingerprint = REQUEST.fingerprint(FIELD, SETTINGS)
    folder = tmp_path / "field"
    row = write_field_outputs(FIELD, fetch_result(cube), REQUEST, folder, fingerprint, "f", "F")
    assert row.outside_imagery == pytest.approx(0.5)
    # Over the imaged half: date 0 half clear (columns 2, 3 of 2..5), 1 and 3 clear, 2 cloudy.
    assert row.clear_fraction_mean == pytest.approx((0.5 + 1 + 0 + 1) / 4)
    assert "50% of it outside the imagery" in row.line()
    assert completed_row(folder, fingerprint).outside_imagery == pytest.approx(0.5)


def test_a_baselines_curve_over_a_field_partly_never_seen_says_so(tmp_path) -> None:
    """Linear fills a pixel from its own clear observations only: over a field a quarter of
    which is never seen clear, the curve is the mean of the rest, which the summary now says
    (review 6: "ok" from 12 of 169 pixels without a word)."""
    cube = make_cube()
    cube["valid"].values[:, 2:4, :] = 0  # field rows 2-3 (16 of its 64 pixels) never clear
    fingerprint = REQUEST.fingerprint(FIELD, SETTINGS)
    row = write_field_outputs(
        FIELD, fetch_result(cube), REQUEST, tmp_path / "f", fingerprint, "f", "F"
    )
    assert row.seen_fraction == pytest.approx(0.75) and row.record()["seen_fraction"] == "0.750"
    assert "curve from the 75% of it ever seen clear" in row.line()
    # The model fills every pixel: the share is reported, the line says nothing of it.
    modelled = dataclasses.replace(row, method="model")
    assert "ever seen clear" not in modelled.line()
    whole = write_field_outputs(
        FIELD, fetch_result(), REQUEST, tmp_path / "g", fingerprint, "g", "G"
    )
    assert whole.seen_fraction == 1.0 and "ever seen clear" not in whole.line()


def test_a_field_covering_no_pixel_centre_fails_with_a_message(tmp_path) -> None:
    tiny = Field(lonlat_box(500026.0, 5600026.0, 500034.0, 5600034.0), "Tiny")
    with pytest.raises(InputError, match="covers no pixel centre"):
        write_field_outputs(
            tiny, fetch_result(), REQUEST, tmp_path, REQUEST.fingerprint(tiny, SETTINGS), "t", "T"
        )


# --- summary -----------------------------------------------------------------------------------


def test_summary_rows_and_lines() -> None:
    rows = [
        FieldRow(
            "west",
            "West",
            "ok",
            8,
            6,
            "loaded",
            17,
            0.4567,
            "2023-07-01",
            0.81234,
            4.26,
            days_to_clear_max=12,
            green_up_date="2023-06-02",
        ),
        FieldRow("east", "East", "skipped", 8, None, "skipped", 17, 0.5, "2023-07-03", 0.8),
        FieldRow("far", "Far", "failed", seconds=0.35, error="No scenes, try later."),
    ]
    table = list(csv.DictReader(io.StringIO(summary_csv(rows))))
    assert list(table[0]) == list(SUMMARY_COLUMNS)
    assert table[0] == {
        "field_id": "west",
        "name": "West",
        "status": "ok",
        "scenes_s2": "8",
        "scenes_s1": "6",
        "s1_status": "loaded",
        "frames": "17",
        "clear_fraction_mean": "0.457",
        "outside_imagery": "",
        "seen_fraction": "",
        "days_to_clear_max": "12",
        "ndvi_peak_date": "2023-07-01",
        "ndvi_peak": "0.8123",
        "green_up_date": "2023-06-02",
        "decline_date": "",
        "model_vs_baseline": "",
        "model_ndvi_vs_baseline": "",
        "model_trained_here": "",
        "seconds": "4.3",
        "error": "",
    }
    assert table[1]["scenes_s1"] == "" and table[1]["status"] == "skipped"
    assert table[2]["error"] == "No scenes, try later." and table[2]["frames"] == ""
    assert rows[0].line() == (
        "west: ok in 4.3 s (8 S2 / 6 S1 scenes, 17 frames, 46% clear, at most 12 d from clear "
        "data, NDVI peak 0.81 on 2023-07-01, green-up 2023-06-02)"
    )
    # With the model: how it did on the field's own pixels, and whether it was trained there.
    modelled = dataclasses.replace(rows[0], model_vs_baseline=0.9213, model_trained_here=1)
    assert modelled.record()["model_vs_baseline"] == "0.921"
    assert modelled.record()["model_trained_here"] == "1"
    assert modelled.line().endswith(
        "green-up 2023-06-02, model 0.92 x the better baseline, trained here)"
    )
    # and on the NDVI curve's points, where the Run measured them (review 30)
    curved = dataclasses.replace(modelled, model_ndvi_vs_baseline=1.0876)
    assert curved.record()["model_ndvi_vs_baseline"] == "1.088"
    assert curved.line().endswith(
        "model 0.92 x the better baseline, 1.09 x on the NDVI curve, trained here)"
    )
    assert model_measures({"model_trained_on_site": 0}) == {"model_trained_here": 0}
    measures = model_measures(
        {"model_field_mae": [0.03, 0.031, 0.034, 0.033], "model_trained_on_site": 1}
    )
    assert measures == {"model_trained_here": 1, "model_vs_baseline": pytest.approx(0.9091, 1e-4)}
    assert model_measures({}) == {}
    assert rows[1].line().startswith("east: skipped, complete from an earlier run (")
    # A field partly outside the imagery says so; a sliver under 1 % does not.
    straddling = dataclasses.replace(rows[0], outside_imagery=0.3)
    assert straddling.record()["outside_imagery"] == "0.300"
    assert "46% clear, 30% of it outside the imagery, at most" in straddling.line()
    assert "outside" not in dataclasses.replace(rows[0], outside_imagery=0.004).line()
    assert rows[2].line() == "far: failed after 0.3 s: No scenes, try later."


# --- GPU routing and the scheduler -------------------------------------------------------------


def _info(*resources: dict[str, float]) -> dict:
    return {
        "workers": {
            f"tcp://10.0.0.{i}:4000": {"nthreads": 2, "resources": r}
            for i, r in enumerate(resources)
        }
    }


def test_gpu_is_requested_only_for_the_model_on_clusters_with_gpu_workers() -> None:
    cpu_only, mixed = _info({}, {}), _info({}, {"GPU": 1}, {"GPU": 2.0})
    assert gpu_capacity({}) == 0.0 and gpu_capacity(cpu_only) == 0.0
    assert gpu_capacity(mixed) == 3.0
    assert reconstruct_resources(mixed, "model") == {"GPU": 1.0}
    assert reconstruct_resources(cpu_only, "model") is None
    assert reconstruct_resources(mixed, "linear") is None
    assert reconstruct_resources(mixed, "whittaker") is None
    assert reconstruct_resources(_info({"GPU": 0}), "model") is None
    assert reconstruct_resources({"workers": {"w": {}}}, "model") is None


def test_a_cube_is_always_sent_to_the_same_able_worker() -> None:
    cube, info = make_cube(), _info({}, {"GPU": 1}, {}, {"GPU": 1})
    gpu_workers = {"tcp://10.0.0.1:4000", "tcp://10.0.0.3:4000"}
    assert field_worker(info, cube, {"GPU": 1.0}) in gpu_workers
    chosen = field_worker(info, cube)
    assert chosen in info["workers"]
    assert all(field_worker(info, make_cube()) == chosen for _ in range(3))  # a copy: the same
    # other fields (other grids) spread over the workers
    others = {
        field_worker(info, cube.assign_coords(x=cube["x"] + 10.0 * shift)) for shift in range(40)
    }
    assert others == set(info["workers"])
    with pytest.raises(ClusterError, match=r"No worker of the cluster offers.*GPU=1"):
        field_worker(_info({}, {}), cube, {"GPU": 1.0})


def test_scheduler_address_comes_from_the_environment() -> None:
    assert scheduler_address({}) is None
    assert scheduler_address({"DASK_SCHEDULER_ADDRESS": "  "}) is None
    assert scheduler_address({"DASK_SCHEDULER_ADDRESS": " tcp://s:8786 "}) == "tcp://s:8786"
    with pytest.raises(InputError, match="DASK_SCHEDULER_ADDRESS"):
        connect(environ={})


@pytest.mark.parametrize(
    "address", ["tcp://10.0.0.5:8786", "tls://sched.example.org:8786", "sched:8786", "[::1]:8786"]
)
def test_scheduler_addresses_of_every_accepted_form_pass(address: str) -> None:
    assert check_scheduler_address(f" {address} ") == address


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("notanaddress", "it has no :PORT"),
        ("tcp://sched", "it has no :PORT"),
        ("sched:abc", "its port is no number"),
        ("tcp://:8786", "it names no host"),
        ("sched:0", "the port 0 is not one from 1 to 65535"),
        ("sched:70000", "the port 70000 is not one from 1 to 65535"),
        ("http://sched:8786", "'http://' is no Dask transport"),
    ],
)
def test_a_malformed_scheduler_address_is_refused_before_any_client(
    address: str, problem: str
) -> None:
    """At once (no connection attempt within the 5 s time-out), naming where the address came
    from, what is wrong and the forms it may take."""
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        connect(environ={"DASK_SCHEDULER_ADDRESS": address}, timeout_s=5.0)
    assert time.monotonic() - started < 1.0
    assert str(caught.value) == (
        f"DASK_SCHEDULER_ADDRESS is {address!r}, which is not a Dask scheduler address "
        f"({problem}): give it as tcp://HOST:PORT (e.g. tcp://127.0.0.1:8786, the address "
        "'dask scheduler' prints), tls://HOST:PORT or HOST:PORT; or unset "
        "DASK_SCHEDULER_ADDRESS to work on this machine."  # review 21: the way out, said
    )
    with pytest.raises(InputError, match=r"^The Dask scheduler address is 'notanaddress'") as given:
        connect("notanaddress")
    assert str(given.value).endswith("tls://HOST:PORT or HOST:PORT.")  # no variable to unset


def test_an_unreachable_scheduler_is_a_clear_error_within_the_timeout() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ClusterError, match=rf"tcp://127.0.0.1:{port} within 1 s.*dask scheduler"):
        connect(environ={"DASK_SCHEDULER_ADDRESS": f"tcp://127.0.0.1:{port}"}, timeout_s=1.0)


# --- the cluster wrapper -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def threads_cluster():
    with local_cluster(2, processes=False) as cluster:
        yield cluster


def test_a_reconstruction_waiting_its_turn_on_the_cluster_says_so_and_is_not_timed(
    monkeypatch,
) -> None:
    # Review 19: a Run queued behind a region's training on the only worker sat at "0 of 46"
    # without a word for minutes, and the wait counted against its 900 s limit.
    from core import distributed
    from core.progress import CHECK, PART, listening

    monkeypatch.setattr(distributed, "QUEUE_LOOK_S", 0.5)
    cube = make_cube()
    dates = np.array(["2023-05-04", "2023-05-12"], dtype="datetime64[ns]")
    heard: list[str] = []
    with local_cluster(1, processes=False, threads_per_worker=1) as cluster:
        busy = cluster.client.submit(time.sleep, 4.0, pure=False)  # the only thread, taken
        with listening(lambda what, _done, _total: heard.append(what)):
            remote = submit_reconstruction(cluster, cube, dates, "linear", timeout_s=2.0)
        assert busy.done()
    xr.testing.assert_identical(remote, reconstruct(cube, dates, "linear"))
    stages = [what for what in heard if what not in (CHECK, PART)]
    assert stages[0] == distributed.QUEUED_STAGE, heard
    # and, where a look falls while the worker runs it (not always: linear is quick), which
    # worker took it
    worker = "reconstructing on the Dask cluster's worker "
    assert all(s == distributed.QUEUED_STAGE or s.startswith(worker) for s in stages), stages


def test_submit_reconstruction_matches_a_local_call_and_passes_errors_back(threads_cluster):
    cube = make_cube()
    dates = np.array(["2023-05-04", "2023-05-12"], dtype="datetime64[ns]")
    remote = submit_reconstruction(threads_cluster, cube, dates, "linear")
    local = reconstruct(cube, dates, "linear")
    xr.testing.assert_identical(remote, local)
    # 05-04 00:00 lies (2 days - 10.5 h) / 5 days of the way from 0.05 (05-02) to 0.06 (05-07)
    expected = 0.05 + 0.01 * (2 - 10.5 / 24) / 5
    assert float(remote["s2"].sel(band="B02").values[0, 5, 5]) == pytest.approx(expected)
    info = threads_cluster.info()
    assert (info.workers, info.threads, info.gpus) == (2, 2, 0.0)
    assert info.describe().endswith(": 2 workers, 2 threads, no GPU workers")
    with pytest.raises(InputError, match="outside the cube's period"):
        submit_reconstruction(threads_cluster, cube, np.array(["2024-01-01"], "M8[ns]"), "linear")
    assert reconstructor(None) is reconstruct
    on_cluster = reconstructor(threads_cluster)
    xr.testing.assert_identical(on_cluster(cube, dates, "linear", ReconstructOptions()), local)


def test_a_run_left_during_a_cluster_reconstruction_frees_the_worker_at_its_next_step(
    threads_cluster, flanders_cube
) -> None:
    """The app's Run waits for the cluster's result in short waits; left by the user, it
    cancels the task, and the task, watching its own state on the worker, stops at its next
    tuning step instead of running its chunk to the end (here some 200 steps of tuning)."""
    from core.jobs import JobBoard, JobCancelled

    def executing() -> int:
        counts = threads_cluster.client.run(lambda dask_worker: dask_worker.state.executing_count)
        return sum(counts.values())

    cube = flanders_cube.isel(x=slice(0, 32), y=slice(0, 32))
    dates = cube["time_s2"].values[[20]]
    options = ReconstructOptions(samples=1, adapt_steps=200, device="cpu")
    board = JobBoard()
    job = board.join(
        "run", lambda _: submit_reconstruction(threads_cluster, cube, dates, "model", options), "me"
    )
    deadline = time.monotonic() + 60
    while executing() == 0 and time.monotonic() < deadline and not job.done:
        time.sleep(0.1)
    assert executing() == 1, job.error
    time.sleep(3.0)  # into the tuning
    assert not job.done
    left = time.monotonic()
    assert board.leave("run", "me")
    assert job.wait(5.0) and isinstance(job.error, JobCancelled)
    while executing() and time.monotonic() - left < 30:
        time.sleep(0.1)
    freed_after = time.monotonic() - left
    assert executing() == 0
    assert freed_after < 10.0, f"the worker kept working {freed_after:.1f} s after the cancel"


def test_the_workers_own_stages_of_a_reconstruction_reach_the_run(
    threads_cluster, flanders_cube
) -> None:
    # Review 19: on a cluster the per-field tuning, run on the worker, told the Run nothing:
    # its page sat at "0 of 46" for 35-45 s. Its steps now come back as they pass.
    from core.model.training import ADAPT_BEAT
    from core.progress import PART, listening

    cube = flanders_cube.isel(x=slice(0, 24), y=slice(0, 24))
    dates = cube["time_s2"].values[[20]]
    options = ReconstructOptions(samples=1, adapt_steps=6, device="cpu", blend_field=False)
    heard: list[tuple[str, int, int]] = []
    with listening(lambda what, done, total: heard.append((what, done, total))):
        remote = submit_reconstruction(threads_cluster, cube, dates, "model", options)
    tuning = [(done, total) for what, done, total in heard if what == ADAPT_BEAT]
    # as they pass (the last may arrive after the result: the Run's own stage follows then)
    assert tuning and all(total == 6 for _, total in tuning), heard
    assert [d for d, _ in tuning] == sorted(d for d, _ in tuning)
    assert all(what != PART for what, _, _ in heard)  # the tiles' shares stay on the worker
    assert np.isfinite(remote["s2"].values).any()


def test_the_workers_are_asked_for_not_read_from_the_clients_refreshed_copy() -> None:
    # The client's periodic refresh stores an identity without its workers; with it every
    # millisecond, client.scheduler_info(n_workers=-1) read "no workers" in 100 of 300 calls.
    refresh = {"distributed.client.scheduler-info-interval": "1ms"}
    with dask.config.set(refresh), local_cluster(2, processes=False) as cluster:
        answers = [scheduler_details(cluster.client) for _ in range(200)]
        assert all(len(a["workers"]) == 2 for a in answers)
        assert cluster.info().workers == 2


def test_every_reconstruction_of_a_cube_runs_on_one_worker(threads_cluster) -> None:
    """So the model's per-field fits, kept per worker process, are made once per Run."""
    from distributed import get_task_stream

    cube = make_cube()
    dates = np.array(["2023-05-04", "2023-05-12"], dtype="datetime64[ns]")
    with get_task_stream(client=threads_cluster.client) as stream:
        for _ in range(6):
            submit_reconstruction(threads_cluster, cube, dates, "linear")
    ran_on = {
        task["worker"]
        for task in stream.data
        if str(task["key"]).startswith("fieldflow-reconstruct-")
    }
    assert len(ran_on) == 1, stream.data
    details = scheduler_details(threads_cluster.client)
    assert ran_on == {field_worker(details, cube)}


def _cubes_on_workers(cluster: Cluster) -> set[str]:
    """Keys of the datasets the workers hold now."""
    held = cluster.client.has_what()
    return {str(k) for keys in held.values() for k in keys if str(k).startswith("Dataset-")}


def _wait_for(condition, timeout_s: float = 10.0) -> bool:
    """Poll ``condition`` (the scheduler forgets released data asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_cube_is_sent_once_per_run_and_released_when_dropped() -> None:
    """A Run's chunks reuse the cube already on the worker; old or dropped cubes leave it.

    Worker processes, as in production: in-process workers hold the cube object itself.
    """
    dates = np.array(["2023-05-04", "2023-05-12"], dtype="datetime64[ns]")
    with local_cluster(1, processes=True) as cluster:
        if cluster.note:  # worker processes could not start here: nothing to measure
            pytest.skip(cluster.note)
        cube = make_cube()
        seen = []
        for _ in range(4):
            submit_reconstruction(cluster, cube, dates, "linear")
            seen.append(_cubes_on_workers(cluster))
        assert len(seen[0]) == 1 and all(keys == seen[0] for keys in seen), seen
        # the same data in another object is another cube; the first stays while referenced
        twin = cube.copy(deep=True)
        submit_reconstruction(cluster, twin, dates, "linear")
        assert len(_cubes_on_workers(cluster)) == 2
        # a cube nobody references any more leaves the workers
        del twin
        gc.collect()
        assert _wait_for(lambda: _cubes_on_workers(cluster) == seen[0])
        # at most HELD_CUBES stay: the least recently used goes first
        others = [make_cube() for _ in range(HELD_CUBES)]
        for other in others:
            submit_reconstruction(cluster, other, dates, "linear")
        assert cluster.held_cubes() == HELD_CUBES
        assert _wait_for(lambda: len(_cubes_on_workers(cluster)) == HELD_CUBES)
        assert not seen[0] & _cubes_on_workers(cluster)
        # and an evicted cube is simply sent again
        xr.testing.assert_identical(
            submit_reconstruction(cluster, cube, dates, "linear"),
            reconstruct(cube, dates, "linear"),
        )
        del others, other
        gc.collect()
        assert _wait_for(lambda: len(_cubes_on_workers(cluster)) == 1)


def test_a_model_task_uses_as_many_torch_threads_as_its_worker_has() -> None:
    """A worker process starts with OMP_NUM_THREADS=1, so PyTorch would use one core; and
    without Dask's MALLOC_TRIM_THRESHOLD_, which made every large buffer a fresh mapping."""

    def probe() -> tuple[int, int, int, str | None]:
        import torch

        from core.distributed import worker_torch_threads

        first = torch.get_num_threads()
        with worker_torch_threads() as inside:
            during = torch.get_num_threads()
        trim = os.environ.get("MALLOC_TRIM_THRESHOLD_")
        return first, inside if inside == during else -1, torch.get_num_threads(), trim

    with local_cluster(1, processes=True, threads_per_worker=2) as cluster:
        if cluster.note:  # worker processes could not start here: nothing to measure
            pytest.skip(cluster.note)
        first, during, after, trim = cluster.client.submit(probe, pure=False).result(timeout=60)
        assert cluster.info().trimming_workers == 0
    assert (first, during, after) == (1, 2, 1)
    assert trim is None
    # the setting applies to the cluster's start only
    assert dask.config.get("distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_")


def _allocation_probe() -> tuple[str | None, bool, bool]:
    from core import distributed
    from tests.support.allocation import second_big_malloc_is_mapped

    return (
        os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        second_big_malloc_is_mapped(),
        distributed._malloc_trimming(),
    )


def test_restore_allocation_undoes_dasks_malloc_setting_in_a_process() -> None:
    """A process started as Dask starts its workers maps every big buffer afresh; after
    restore_allocation it reuses the heap, as a process started normally does."""
    import subprocess
    import sys

    code = (
        f"import sys; sys.path[:0] = [{str(Path(__file__).parents[2])!r}]\n"
        "from tests.support.allocation import second_big_malloc_is_mapped as mapped\n"
        "from core.distributed import restore_allocation, _malloc_trimming\n"
        "print(mapped(), _malloc_trimming(), restore_allocation(), mapped(), _malloc_trimming())"
    )
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    dasks = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "MALLOC_TRIM_THRESHOLD_": "65536"},
        capture_output=True,
        text=True,
    )
    assert plain.stdout.split() == ["False", "False", "True", "False", "False"], plain.stderr
    assert dasks.stdout.split() == ["True", "True", "True", "False", "False"], dasks.stderr


def test_workers_started_with_dasks_defaults_get_glibcs_allocation_back(caplog) -> None:
    """A cluster of one's own, started with Dask's defaults (MALLOC_TRIM_THRESHOLD_ in its
    workers' environment): connecting sets each worker's allocation back to glibc's own, so
    nothing needs pointing out; a bare Client (no FieldFlow connect) is pointed out."""
    from distributed import Client, LocalCluster

    try:
        local = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None)
    except Exception as exc:  # a nanny that cannot start here: nothing to measure
        pytest.skip(f"worker processes could not start: {exc}")
    with local:
        with Cluster(Client(local, set_as_default=False)) as bare:
            before = bare.client.submit(_allocation_probe, pure=False).result(timeout=60)
            bare_info = bare.info()
        with (
            caplog.at_level("WARNING", logger="core.distributed"),
            connect(local.scheduler_address) as cluster,
        ):
            after = cluster.client.submit(_allocation_probe, pure=False).result(timeout=60)
            info = cluster.info()
    assert before == ("65536", True, True)
    assert bare_info.trimming_workers == 1
    assert "1 allocate memory as Dask's MALLOC_TRIM_THRESHOLD_" in bare_info.describe()
    assert "core/dask.yaml in /etc/dask/" in bare_info.describe()
    assert after == ("65536", False, False)
    assert info.trimming_workers == 0
    assert "MALLOC" not in info.describe()
    assert not [r for r in caplog.records if "core/dask.yaml" in r.getMessage()], caplog.records


def test_a_scheduler_without_workers_is_a_clear_error() -> None:
    from distributed import Client, LocalCluster

    empty = LocalCluster(n_workers=0, processes=False, dashboard_address=None)
    with (
        Cluster(Client(empty, set_as_default=False), local=empty) as cluster,
        pytest.raises(ClusterError, match=r"has no workers.*dask worker"),
    ):
        submit_reconstruction(cluster, make_cube(), TIMES[:1], "linear")
    with pytest.raises(InputError, match="at least 1 worker"):
        local_cluster(0)


def test_streamlit_can_cache_the_wrapper_but_not_a_bare_client(threads_cluster) -> None:
    import streamlit as st
    from streamlit.runtime.caching.cache_errors import CachedFunctionReturnedAwaitableError

    @st.cache_resource
    def wrapper() -> Cluster:
        return threads_cluster

    @st.cache_resource
    def bare() -> object:
        return threads_cluster.client

    assert wrapper() is wrapper() is threads_cluster
    with pytest.raises(CachedFunctionReturnedAwaitableError):
        bare()
    wrapper.clear()
    bare.clear()


def test_model_frames_are_the_curves_own_reconstruction(flanders_cube, cubes_dir, tmp_path):
    """With the model (whose estimate of a day depends a little on the other days asked for)
    the frames written for a field are taken from the daily curve's reconstruction: each
    frame's field-mean NDVI is the curve's on that day, acquisition or not."""
    from core.demo import DEMO_CUBE_NAME, demo_field
    from core.grid import field_mask
    from core.season import crop_to_field

    field = demo_field(cubes_dir / DEMO_CUBE_NAME)
    cube, grid = crop_to_field(flanders_cube, field)
    fetched = FetchResult(
        cube=cube,
        grid=grid,
        scenes_found={},
        frames_loaded={},
        s1_status="loaded",
        s1_message="",
    )
    request = BatchRequest(
        start="2018-05-01",
        end="2018-05-20",
        every_days=6,
        method="model",
        options=ReconstructOptions(samples=4, steps=2, blend_field=False),
    )
    folder = tmp_path / "demo"
    row = write_field_outputs(
        field, fetched, request, folder, request.fingerprint(field, SETTINGS), "demo", "Demo"
    )
    assert row.status == "ok"
    with (folder / CURVE_FILE).open() as handle:
        curve = {r["date"]: float(r["ndvi"]) for r in csv.DictReader(handle)}
    mask = field_mask(field, grid)
    acquired = {str(d) for d in np.unique(cube["time_s2"].values.astype("datetime64[D]"))}
    checked = {True: 0, False: 0}
    with rasterio.open(folder / FRAMES_FILE) as src:
        for index, name in enumerate(src.descriptions, start=1):
            day, layer = name.split()
            if layer != "NDVI":
                continue
            values = src.read(index)[mask]
            assert float(np.nanmean(values)) == pytest.approx(curve[day], abs=1e-4)
            checked[day in acquired] += 1
    assert checked[True] and checked[False]  # acquisitions and days without one


def test_a_worker_gives_freed_memory_back_once_no_model_task_runs(monkeypatch) -> None:
    """model_task: memory the model freed stays while tasks follow each other (so the next does
    not fault its pages in again) and goes back to the system once the worker is idle."""
    import psutil

    from core import distributed

    process = psutil.Process()
    monkeypatch.setattr(distributed, "TRIM_AFTER_IDLE_S", 0.3)
    trims = distributed.idle_trims
    with distributed.model_task():
        with distributed.model_task():  # a second task, ending first
            blocks = [np.ones(12_800) for _ in range(2_000)]  # 100 kB each: the heap's
            keep = blocks[-1]  # pins the heap's top, so only a trim gives the rest back
            del blocks
        held = process.memory_info().rss
        time.sleep(0.6)  # one task still runs: nothing is given back
        assert distributed.idle_trims == trims
        assert process.memory_info().rss > held - 20 * 2**20
    assert _wait_for(lambda: distributed.idle_trims == trims + 1)
    assert _wait_for(lambda: process.memory_info().rss < held - 60 * 2**20), (
        held,
        process.memory_info().rss,
    )
    del keep


def test_a_fields_reconstruction_waits_its_turn_among_the_processs_runs(
    tmp_path, monkeypatch
) -> None:
    # In the app's process the batch's fields and the users' Runs share one gate: with one
    # Run at a time allowed and another holding it, the field waits, then is made as usual.
    monkeypatch.setenv("FIELDFLOW_MAX_RUNS", "1")
    item = BatchField(0, "field", "F", FIELD)
    fingerprint = REQUEST.fingerprint(FIELD, SETTINGS)
    rows: list[FieldRow] = []
    worker = threading.Thread(
        target=lambda: rows.append(
            reconstruct_task(Fetched(fetch_result()), item, REQUEST, str(tmp_path), fingerprint)
        ),
        daemon=True,
    )
    with PROCESS_GATE.admitted(1, Admission(most_runs=1, memory_bytes=1e12)):
        worker.start()
        until(lambda: PROCESS_GATE.waiting() == 1, 30.0)
        worker.join(1.5)
        assert worker.is_alive() and not (tmp_path / MARKER_FILE).exists()
    worker.join(60)
    assert [row.status for row in rows] == ["ok"]
    assert completed_row(tmp_path, fingerprint) is not None
    assert PROCESS_GATE.running() == 0 and PROCESS_GATE.waiting() == 0


def test_a_field_folder_that_turned_read_only_is_said_in_words(tmp_path) -> None:
    # Review 13: the row read "failed after 0.1 s: OSError: [Errno 30] Read-only file system:
    # '.../f0'" (the folder to make) or the marker's unlink failed the same way.
    from tests.unit.conftest import read_only

    out = tmp_path / "out"
    done = out / "done"
    fingerprint = REQUEST.fingerprint(FIELD, SETTINGS)
    write_field_outputs(FIELD, fetch_result(), REQUEST, done, fingerprint, "done", "D")
    item = BatchField(0, "new", "N", FIELD)
    with read_only(out), read_only(done):
        for folder in (out / "new", done):  # to make, and holding a marker to remove
            row = reconstruct_task(
                Fetched(fetch_result(), seconds=0.5), item, REQUEST, str(folder), fingerprint
            )
            assert row.status == "failed"
            assert row.error.startswith("Could not ") and str(folder) in row.error, row.error
            assert "Errno" not in row.error and "OSError" not in row.error
            assert row.error.endswith("Choose a folder you can write to, then run again.")


# --- review 15: odd field files through batch ---------------------------------------------------


def test_a_field_that_fails_on_a_rerun_leaves_no_other_requests_outputs_behind(tmp_path) -> None:
    # Its old curve went into all_fields_ndvi.csv as its own, and, for unnamed fields, another
    # field's curve under its folder.
    from core.batch import joined_curves

    out = tmp_path / "out"
    fingerprint = REQUEST.fingerprint(FIELD, SETTINGS)
    for field_id in ("a", "b", "c"):
        write_field_outputs(
            FIELD, fetch_result(), REQUEST, out / field_id, fingerprint, field_id, field_id
        )
    other = BatchRequest(start="2023-05-01", end="2023-05-31", every_days=3)
    rows = [
        reconstruct_task(
            Fetched(None, "No scenes.", 0.1),
            BatchField(0, "a", "A", FIELD),
            other,
            str(out / "a"),
            {},
        ),
        reconstruct_task(
            Fetched(fetch_result(), None, 0.1),
            BatchField(1, "b", "B", None),
            other,
            str(out / "b"),
            {},
        ),
        completed_row(out / "c", fingerprint),
    ]
    assert [r.status for r in rows] == ["failed", "failed", "skipped"]
    for field_id, row in zip(("a", "b"), rows, strict=False):
        assert not any(
            (out / field_id / name).exists() for name in (MARKER_FILE, CURVE_FILE, FRAMES_FILE)
        )
        # kept aside since 2026-12-06, out of the tables, and said
        assert completed_row(out / field_id / "earlier", fingerprint) is not None
        assert f"are kept in {out / field_id / 'earlier'}" in row.error
    table = joined_curves(rows, out).splitlines()
    assert {line.split(",")[0] for line in table[1:]} == {"c"}
    # each of c's values under its own column, as in its own ndvi.csv (review 28: the columns
    # rotated under the header passed here)
    joined = pd.read_csv(io.StringIO(joined_curves(rows, out)), dtype=str, keep_default_na=False)
    own = pd.read_csv(out / "c" / CURVE_FILE, dtype=str, keep_default_na=False)
    assert list(joined.columns) == ["field_id", "name", *own.columns]
    assert (joined["name"] == "c").all()
    pd.testing.assert_frame_equal(joined[list(own.columns)], own)
    # a failed row whose folder still holds a curve (written by hand, say) is not joined either
    (out / "a" / CURVE_FILE).write_text((out / "c" / CURVE_FILE).read_text())
    assert {line.split(",")[0] for line in joined_curves(rows, out).splitlines()[1:]} == {"c"}


def test_outputs_set_aside_are_replaced_by_newer_ones_and_partial_ones_are_not_kept(
    tmp_path,
) -> None:
    from core.batch import EARLIER_FOLDER, clear_outputs, restore_earlier

    folder = tmp_path / "f"
    first = REQUEST.fingerprint(FIELD, SETTINGS)
    later = BatchRequest(start="2023-05-01", end="2023-05-22", every_days=2)
    second = later.fingerprint(FIELD, SETTINGS)
    write_field_outputs(FIELD, fetch_result(), REQUEST, folder, first, "f", "F")
    assert clear_outputs(folder)  # a failure of another request keeps them aside ...
    write_field_outputs(FIELD, fetch_result(), later, folder, second, "f", "F")
    assert not (folder / EARLIER_FOLDER).exists()  # ... until that request succeeds
    assert clear_outputs(folder)  # failing again keeps the newer ones, not both
    assert completed_row(folder / EARLIER_FOLDER, second) is not None
    assert not restore_earlier(folder, first)  # the first request's are gone
    assert restore_earlier(folder, second) and completed_row(folder, second) is not None
    assert not (folder / EARLIER_FOLDER).exists()
    # a run killed half-way (frames written, no marker) leaves nothing to keep
    (folder / MARKER_FILE).unlink()
    assert clear_outputs(folder) == ""
    assert sorted(p.name for p in folder.iterdir()) == []


def test_the_rows_clear_fraction_and_the_frames_tags_are_the_csvs(tmp_path) -> None:
    # Review 22: clear_fraction_mean was the unscreened cube's (0.521 against its CSV's 0.504),
    # the margin's mean for a period without an acquisition, and frames.tif tagged a day with
    # no acquisition OBSERVED_FRACTION 0.0000, as an acquisition all cloud.
    cube = make_cube()
    red = cube["s2"].values[0, 2]  # B04 of 05-02 at the reflectance floor on half the grid:
    red[:6] = 0.0001  # the whole scene over-corrected, screened as every reconstruction does
    field = Field(lonlat_box(500001.0, 5600001.0, 500119.0, 5600119.0), "Whole grid")
    fingerprint = REQUEST.fingerprint(field, SETTINGS)
    row = write_field_outputs(field, fetch_result(cube), REQUEST, tmp_path, fingerprint, "f", "F")
    with (tmp_path / CURVE_FILE).open() as handle:
        told = [float(r["clear_fraction"]) for r in csv.DictReader(handle) if r["clear_fraction"]]
    assert told == [0.0, 1.0, 0.0, 1.0]  # 05-02 screened, 05-12 all cloud
    assert row.clear_fraction_mean == pytest.approx(np.mean(told))
    with rasterio.open(tmp_path / FRAMES_FILE) as src:
        dates = src.tags()["DATES"].split(",")
        layers = int(src.tags()["LAYERS_PER_DATE"])
        tags = {date: src.tags(layers * i + 1) for i, date in enumerate(dates)}
    assert tags["2023-05-12"] == {
        "DATE": "2023-05-12", "NAME": "B02", "ACQUIRED": "yes", "OBSERVED_FRACTION": "0.0000"
    }  # fmt: skip
    assert tags["2023-05-11"] == {"DATE": "2023-05-11", "NAME": "B02", "ACQUIRED": "no"}
    assert tags["2023-05-02"]["OBSERVED_FRACTION"] == "0.0000"
    # A period of a few days between two passes: no clear fraction of its own to average.
    between = BatchRequest(start="2023-05-08", end="2023-05-10", every_days=1)
    fingerprint = between.fingerprint(field, SETTINGS)
    row = write_field_outputs(
        field, fetch_result(cube), between, tmp_path / "b", fingerprint, "b", "B"
    )
    assert row.status == "ok" and row.clear_fraction_mean is None
    assert "% clear" not in row.line()


def test_an_id_column_wins_over_a_geojson_features_own_id_and_integers_stay_integers(
    tmp_path,
) -> None:
    # geopandas' to_json writes its row index as each feature's "id": --id-column ID gave
    # folders 0/1/2, not the column's P-17/P-18/P-21; an integer column with an empty value
    # reads as floats and gave 101_0.
    outline = FIELD.geometry
    features = [_feature(outline, ID=f"P-{n}", name=f"n{n}") for n in (17, 18, 21)]
    for index, feature in enumerate(features):
        feature["id"] = str(index)
    path = _write_geojson(tmp_path / "fields.geojson", features)
    assert [f.field_id for f in list_fields(path, id_column="ID")] == ["P-17", "P-18", "P-21"]
    assert [f.field_id for f in list_fields(path, id_column="id")] == ["P-17", "P-18", "P-21"]
    frame = gpd.GeoDataFrame(
        {"parcel_id": [101.0, 102.0, None]}, geometry=[outline] * 3, crs="EPSG:4326"
    )
    frame.to_file(tmp_path / "fields.gpkg", layer="arable", driver="GPKG")
    ids = [f.field_id for f in list_fields(tmp_path / "fields.gpkg", id_column="parcel_id")]
    assert ids == ["101", "102", "feature-2"]


def test_an_id_column_of_a_zipped_shapefile_in_a_folder_of_the_zip(tmp_path) -> None:
    # GDAL's /vsizip/ finds a shapefile at the archive's root only: the outlines were read,
    # the column was not ("not recognized as being in a supported file format").
    import zipfile

    folder = tmp_path / "Export 2024"
    folder.mkdir()
    frame = gpd.GeoDataFrame(
        {"parcel_no": ["A1", "A2"]}, geometry=[FIELD.geometry] * 2, crs="EPSG:4326"
    )
    frame.to_file(folder / "parcels.shp")
    archive = tmp_path / "parcels.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for part in folder.iterdir():
            bundle.write(part, f"Export 2024/{part.name}")
    assert [f.field_id for f in list_fields(archive, id_column="parcel_no")] == ["A1", "A2"]


def test_a_layer_given_for_a_geojson_is_refused_and_unnamed_fields_are_called_as_listed(
    tmp_path,
) -> None:
    path = _write_geojson(tmp_path / "pA2.geojson", [_feature(FIELD.geometry)])
    with pytest.raises(FieldError, match=r"is GeoJSON, which has no layers.*'arable'"):
        list_fields(path, layer="arable")
    (item,) = list_fields(path)
    assert item.name == "feature 0" and item.field.name == "feature 0"  # not the file's 'pA2'


def test_a_field_outside_the_imagery_fails_with_that_reason(tmp_path) -> None:
    # The model made an "ok" curve of blank days; linear blamed clouds.
    cube = make_cube()
    cube["s2"].values[:] = np.nan
    cube["valid"].values[:] = 0
    cube["s2"].values[:, :, 0, 0] = 0.1  # imaged outside the field only
    cube["valid"].values[:, 0, 0] = 1
    item = BatchField(0, "out", "Outside", FIELD)
    for method in ("linear", "model"):
        request = dataclasses.replace(REQUEST, method=method)
        row = reconstruct_task(
            Fetched(fetch_result(cube), None, 0.1), item, request, str(tmp_path / method), {}
        )
        assert row.status == "failed", row
        assert "images any pixel of the field 'Outside': it lies outside the imagery" in row.error


def test_more_local_workers_than_the_machine_can_run_are_refused_before_any_work(
    tmp_path, capsys
) -> None:
    # Review 16: --workers 100000 kept Dask starting nannies for minutes without a word.
    from core.cli import main
    from core.config import usable_cpus
    from core.distributed import MAX_WORKERS_PER_CPU

    fields = _write_geojson(tmp_path / "f.geojson", [_feature(FIELD.geometry, name="a")])
    most = MAX_WORKERS_PER_CPU * usable_cpus()
    out = str(tmp_path / "out")
    args = ["batch", "--fields", str(fields), "--start", "2023-05-01", "--end", "2023-05-10",
            "--method", "linear", "--out", out, "--scheduler", "local"]  # fmt: skip
    started = time.monotonic()
    assert main([*args, "--workers", "100000"]) == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert f"--workers 100000 is more workers than this machine can run: at most {most}" in err
    assert not (tmp_path / "out").exists()


def test_an_unreachable_scheduler_given_as_an_option_is_not_told_to_unset_a_variable() -> None:
    # Review 16: "--scheduler tcp://127.0.0.1:9" was told to "unset DASK_SCHEDULER_ADDRESS".
    with pytest.raises(ClusterError) as given:
        connect("tcp://127.0.0.1:9", timeout_s=0.5, environ={})
    assert "give no scheduler (on the command line, --scheduler local)" in str(given.value)
    assert "unset" not in str(given.value)
    with pytest.raises(ClusterError) as from_env:
        connect(timeout_s=0.5, environ={"DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:9"})
    assert "unset DASK_SCHEDULER_ADDRESS" in str(from_env.value)


def test_workers_registered_but_not_running_are_neither_counted_nor_routed_to() -> None:
    # Review 17: a worker that failed to start (it could not import FieldFlow's code) stays
    # registered as "closing" until its heartbeat times out; it was counted, given GPU fields
    # and asked to answer, which held the batch for 8 minutes.
    from core.distributed import ClusterInfo, gpu_capacity, usable_workers

    identity = {  # the shape of the scheduler's identity(), as scheduler_details returns it
        "workers": {
            "tcp://10.0.0.1:4001": {"status": "running", "nthreads": 2, "resources": {}},
            "tcp://10.0.0.2:4001": {"status": "closing", "nthreads": 1, "resources": {"GPU": 1}},
            "tcp://10.0.0.3:4001": {"status": "paused", "nthreads": 1, "resources": {}},
        }
    }
    assert sorted(usable_workers(identity)) == ["tcp://10.0.0.1:4001", "tcp://10.0.0.3:4001"]
    assert gpu_capacity(identity) == 0.0
    info = ClusterInfo("tcp://s:8786", 2, 3, 0.0, not_started=("tcp://10.0.0.2:4001 (closing)",))
    assert info.describe() == (
        "tcp://s:8786: 2 workers, 3 threads, no GPU workers (1 more registered but not "
        "running: tcp://10.0.0.2:4001 (closing); their logs say why)"
    )


def test_the_device_names_no_other_outputs_of_an_upload() -> None:
    # Review 23: with only Device changed (auto, then cpu) "Process all" made the same outputs
    # again in another folder and called the earlier ones stale.
    from core.batch import same_outputs, upload_folder

    auto = BatchRequest(start="2023-05-01", end="2023-05-31", method="model")
    cpu = dataclasses.replace(auto, options=dataclasses.replace(auto.options, device="cpu"))
    assert same_outputs(auto) == same_outputs(cpu) and auto != cpu
    assert upload_folder(Path("/c"), b"x", auto) == upload_folder(Path("/c"), b"x", cpu)
    other = dataclasses.replace(auto, options=dataclasses.replace(auto.options, samples=8))
    assert same_outputs(other) != same_outputs(auto)
    assert upload_folder(Path("/c"), b"x", other) != upload_folder(Path("/c"), b"x", auto)
