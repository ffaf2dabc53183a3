"""Calls run in a process of their own (core.apart), and uploads read that way (core.field).

Before 2026-12-06 an upload was read in the app's own process: a file that made GDAL crash
would have ended the server for every user, one that made it loop held a core for ever."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

import core.field
from core.apart import ApartError, run_apart
from core.errors import FieldError
from core.field import (
    field_from_file,
    read_field_file,
    read_field_file_apart,
    read_upload,
)

WEST, SOUTH = 4.00, 51.00  # Flanders


def parcels(path: Path, count: int = 3) -> Path:
    """A GeoPackage of ``count`` 1.2 ha squares side by side, named P1, P2..., in EPSG:32631
    (read back in lon/lat)."""
    frame = gpd.GeoDataFrame(
        {"name": [f"P{i + 1}" for i in range(count)]},
        geometry=[
            box(WEST + 0.002 * i, SOUTH, WEST + 0.002 * i + 0.0015, SOUTH + 0.001)
            for i in range(count)
        ],
        crs="EPSG:4326",
    ).to_crs("EPSG:32631")
    frame.to_file(path, layer="fields", driver="GPKG")
    return path


def test_an_upload_read_apart_is_what_reading_it_here_gives(tmp_path: Path) -> None:
    path = parcels(tmp_path / "Farm 1.gpkg")
    here = read_field_file(path)
    apart = read_upload(path.read_bytes(), "C:\\Users\\me\\Farm 1.gpkg")
    assert [(c.index, c.name, c.geometry_type) for c in apart.candidates()] == [
        (0, "P1", "Polygon"),
        (1, "P2", "Polygon"),
        (2, "P3", "Polygon"),
    ]
    assert [c.area_ha for c in apart.candidates()] == pytest.approx(
        [c.area_ha for c in here.candidates()], rel=1e-12
    )
    chosen = apart.field(index=1)
    assert chosen.name == "P2"
    assert chosen.geometry.equals_exact(field_from_file(path, index=1).geometry, 1e-12)
    assert chosen.area_ha == pytest.approx(1.2, rel=0.1)


def test_a_readers_own_refusal_comes_back_as_it_was_raised(tmp_path: Path) -> None:
    broken = tmp_path / "east.geojson"
    broken.write_text('{"type": "Feature", "geometry": ')
    with pytest.raises(FieldError) as here:
        read_field_file(broken)
    with pytest.raises(FieldError) as apart:
        read_field_file_apart(broken)
    assert str(apart.value) == str(here.value)
    assert "is not valid JSON" in str(apart.value)


def test_a_reading_that_takes_too_long_is_stopped_and_said(tmp_path: Path, monkeypatch) -> None:
    path = parcels(tmp_path / "farm.gpkg")
    monkeypatch.setattr(core.field, "READ_APART_S", 0.05)  # less than the process's start
    started = time.monotonic()
    with pytest.raises(FieldError, match=r"Reading the file 'farm.gpkg' took longer than 0.05 s"):
        read_field_file_apart(path)
    assert time.monotonic() - started < 10  # stopped, not waited for


def test_a_process_that_dies_is_a_crash_and_the_caller_goes_on() -> None:
    with pytest.raises(ApartError) as died:
        run_apart(os.abort, timeout_s=30, memory_mb=0)
    assert died.value.reason == "crash"
    assert died.value.detail.startswith("signal 6")
    assert run_apart(max, 3, 7, timeout_s=30, memory_mb=0) == 7  # the next call is served


def test_a_call_past_its_memory_limit_is_given_up() -> None:
    with pytest.raises(ApartError) as full:
        run_apart(np.ones, 2_000_000_000, timeout_s=30, memory_mb=256)  # 16 GB of float64
    assert full.value.reason == "memory"
    assert run_apart(np.ones, 1000, timeout_s=30, memory_mb=256).sum() == 1000  # within it


def test_a_crashed_reading_is_told_in_words(tmp_path: Path) -> None:
    # The wording a user reads when the reader of their file died.
    message = core.field._given_up(ApartError("crash", "signal 11"), "file 'farm.zip'")
    assert message.startswith(
        "The file 'farm.zip' could not be read: its reader failed (signal 11)"
    )
    assert "load that file instead" in message


def test_uploads_outside_the_process_keep_the_geojson_name_rules(tmp_path: Path) -> None:
    outline = {
        "type": "Feature",
        "properties": {},
        "geometry": box(WEST, SOUTH, WEST + 0.0015, SOUTH + 0.001).__geo_interface__,
    }
    source = read_upload(json.dumps(outline).encode(), "../../Top paddock.geojson")
    assert source.field().name == "Top paddock"
