"""Downloads: a reconstructed frame as GeoTIFF on the cube's grid, the field as GeoJSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from core.errors import InputError
from core.export import (
    field_geojson,
    frame_band_names,
    frame_geotiff,
    read_geotiff_bands,
    safe_file_stem,
)
from core.field import field_from_geojson
from core.grid import grid_from_cube
from core.reconstruct import ReconstructOptions, reconstruct


@pytest.fixture(scope="module")
def small_cube(flanders_cube: xr.Dataset) -> xr.Dataset:
    """A 20 x 30 pixel corner of the real Flanders cube, spring 2018."""
    cube = flanders_cube.isel(y=slice(10, 30), x=slice(20, 50))
    days = cube["time_s2"].values.astype("datetime64[D]")
    keep = (days >= np.datetime64("2018-04-01")) & (days <= np.datetime64("2018-06-30"))
    return cube.isel(time_s2=np.flatnonzero(keep))


def test_geotiff_keeps_grid_values_band_names_and_date(small_cube: xr.Dataset) -> None:
    day = np.array(["2018-05-05"], dtype="datetime64[ns]")
    frame = reconstruct(small_cube, day, "linear")
    grid = grid_from_cube(small_cube)
    data = frame_geotiff(frame, grid, tags={"field": "North"})
    bands, info = read_geotiff_bands(data)
    assert bands.shape == (11, 20, 30)
    assert info["crs"] == "EPSG:32631"
    assert tuple(info["transform"])[:6] == tuple(grid.transform)[:6]
    assert info["names"] == [*frame["band"].values.tolist(), "NDVI"]
    assert info["tags"]["date"] == "2018-05-05"
    assert info["tags"]["method"] == "linear"
    assert info["tags"]["field"] == "North"
    np.testing.assert_array_equal(bands[:10], frame["s2"].values[0])
    np.testing.assert_array_equal(bands[10], frame["ndvi"].values[0])


def test_geotiff_of_a_sampled_frame_carries_the_ndvi_band(small_cube: xr.Dataset) -> None:
    day = np.array(["2018-05-05"], dtype="datetime64[ns]")
    frame = reconstruct(small_cube, day, "linear", ReconstructOptions(samples=2)).isel(time=0)
    assert frame_band_names(frame)[-3:] == ["NDVI", "NDVI_p10", "NDVI_p90"]
    # linear's band has no width (p10 = p90 = NDVI): widen it here, so that each layer can be
    # told from the others (review 28: p10 and p90 written swapped passed)
    frame["ndvi_p10"] = frame["ndvi"] - 0.1
    frame["ndvi_p90"] = frame["ndvi"] + 0.2
    bands, info = read_geotiff_bands(frame_geotiff(frame, grid_from_cube(small_cube)))
    assert bands.shape[0] == 13
    assert info["names"][-3:] == ["NDVI", "NDVI_p10", "NDVI_p90"]
    np.testing.assert_array_equal(bands[:10], frame["s2"].values)
    np.testing.assert_array_equal(bands[10], frame["ndvi"].values)
    np.testing.assert_array_equal(bands[11], frame["ndvi_p10"].values)
    np.testing.assert_array_equal(bands[12], frame["ndvi_p90"].values)


def test_geotiff_refuses_several_dates_and_a_foreign_grid(small_cube: xr.Dataset) -> None:
    days = np.array(["2018-05-05", "2018-05-10"], dtype="datetime64[ns]")
    frames = reconstruct(small_cube, days, "linear")
    grid = grid_from_cube(small_cube)
    with pytest.raises(InputError, match="one date"):
        frame_geotiff(frames, grid)
    other = grid_from_cube(small_cube.isel(x=slice(0, 10)))
    with pytest.raises(InputError, match="grid"):
        frame_geotiff(frames.isel(time=0), other)


def test_field_geojson_round_trips() -> None:
    square = {
        "type": "Polygon",
        "coordinates": [[[3.0, 51.0], [3.003, 51.0], [3.003, 51.002], [3.0, 51.002], [3.0, 51.0]]],
    }
    field = field_from_geojson({"type": "Feature", "geometry": square, "properties": {"name": "A"}})
    text = field_geojson(field)
    doc = json.loads(text)
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 1
    again = field_from_geojson(text)
    assert again.key == field.key and again.name == "A"


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("North field", "North_field"),
        ("../../etc/passwd", "etc_passwd"),
        ("  ", "field"),
        ("Champ été-2", "Champ_été-2"),
    ],
)
def test_safe_file_stem(name: str, stem: str) -> None:
    assert safe_file_stem(name) == stem
