"""The field grid: UTM zone choice, snapping to S2's 10 m pixel edges, field masks."""

from __future__ import annotations

import json

import numpy as np
import pyproj
import pytest
import shapely
from shapely.geometry import Polygon

from core.cube import build_cube
from core.errors import FieldError, InputError
from core.field import Field
from core.grid import (
    Grid,
    cube_lonlat_bounds,
    cube_outline,
    cube_raster,
    distance_km,
    field_mask,
    grid_for_field,
    grid_from_cube,
    project_geometry,
    share_inside,
    share_outside,
    utm_crs_for,
)


def lonlat_box(crs: str, left: float, bottom: float, right: float, top: float) -> Polygon:
    """A rectangle given in UTM metres, as a polygon in EPSG:4326."""
    to_lonlat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    box = shapely.box(left, bottom, right, top)
    return shapely.transform(box, lambda xy: np.column_stack(to_lonlat.transform(*xy.T)))


def test_grid_derived_properties_by_hand() -> None:
    grid = Grid("EPSG:32631", 10.0, x0=500000.0, y0=5600040.0, width=3, height=4)
    assert grid.shape == (4, 3)
    assert grid.bounds == (500000.0, 5600000.0, 500030.0, 5600040.0)
    np.testing.assert_array_equal(grid.x, [500005.0, 500015.0, 500025.0])
    np.testing.assert_array_equal(grid.y, [5600035.0, 5600025.0, 5600015.0, 5600005.0])
    assert grid.transform @ (0, 0) == (500000.0, 5600040.0)
    assert grid.transform @ (3, 4) == (500030.0, 5600000.0)


def test_grid_rejects_empty_or_bad_resolution() -> None:
    with pytest.raises(InputError):
        Grid("EPSG:32631", 10.0, 0.0, 0.0, width=0, height=3)
    with pytest.raises(InputError):
        Grid("EPSG:32631", -10.0, 0.0, 0.0, width=2, height=3)


@pytest.mark.parametrize(
    ("lon", "lat", "expected"),
    [
        (3.0, 50.8, "EPSG:32631"),  # Flanders
        (36.7, -3.4, "EPSG:32737"),  # Arusha: southern hemisphere
        (-4.8, 41.8, "EPSG:32630"),  # Spain, west of Greenwich
        (6.0, 45.0, "EPSG:32632"),  # a zone's west edge belongs to it
        (5.999, 45.0, "EPSG:32631"),
        (180.0, 10.0, "EPSG:32660"),
        (-180.0, -10.0, "EPSG:32701"),
        (10.0, 0.0, "EPSG:32632"),  # the equator counts as north
    ],
)
def test_utm_zone_choice(lon: float, lat: float, expected: str) -> None:
    assert utm_crs_for(lon, lat) == expected


def test_utm_zone_rejects_projected_coordinates() -> None:
    with pytest.raises(FieldError, match="EPSG:4326"):
        utm_crs_for(501365.0, 5629675.0)


def test_grid_snaps_outward_to_multiples_of_the_resolution() -> None:
    # A field from x 501503.2 to 501697.9 and y 5629201.5 to 5629498.1 in zone 31.
    field = lonlat_box("EPSG:32631", 501503.2, 5629201.5, 501697.9, 5629498.1)
    grid = grid_for_field(field, resolution_m=10, margin_m=20)
    assert grid.crs == "EPSG:32631"
    left, bottom, right, top = grid.bounds
    # bounds +- 20 m margin, then out to the next 10 m edge (the 4326 round trip moves
    # vertices by far less than a millimetre)
    assert (left, bottom, right, top) == (501480.0, 5629180.0, 501720.0, 5629520.0)
    assert grid.shape == (34, 24)
    assert all(value % 10 == 0 for value in grid.bounds)


def test_grid_on_exact_edges_gets_no_extra_pixel() -> None:
    field = lonlat_box("EPSG:32631", 501500.0, 5629200.0, 501700.0, 5629500.0)
    grid = grid_for_field(field, margin_m=0)
    assert grid.bounds == (501500.0, 5629200.0, 501700.0, 5629500.0)
    assert grid.shape == (30, 20)


def test_grid_in_southern_hemisphere_uses_327xx_and_false_northing() -> None:
    field = lonlat_box("EPSG:32737", 261000.0, 9595200.0, 261300.0, 9595600.0)
    grid = grid_for_field(field)
    assert grid.crs == "EPSG:32737"
    assert grid.bounds == (260980.0, 9595180.0, 261320.0, 9595620.0)


def test_grid_uses_the_fields_own_utm_zone_and_accepts_a_field() -> None:
    polygon = lonlat_box("EPSG:32630", 344200.0, 4626100.0, 344500.0, 4626400.0)
    field = Field(polygon, "es")
    assert field.utm_crs == "EPSG:32630"
    assert grid_for_field(field) == grid_for_field(polygon)


def test_grid_rejects_a_negative_margin_and_empty_geometry() -> None:
    with pytest.raises(InputError, match="margin"):
        grid_for_field(lonlat_box("EPSG:32631", 0, 0, 10, 10), margin_m=-1)
    with pytest.raises(FieldError):
        grid_for_field(Polygon())


@pytest.mark.parametrize(
    "name", ["be-flanders-a_2017-2018.nc", "tz-arusha_2019-2021.nc", "es-field_2019.nc"]
)
def test_shared_cube_grids_are_subgrids_of_a_field_grid(cubes_dir, name: str) -> None:
    """The shared UTM cubes have pixel edges on multiples of 10 m, so a field inside one gets a
    grid whose pixels coincide with the cube's (a pure offset, no resampling)."""
    from core.cube import read_cube

    cube = read_cube(cubes_dir / name)
    outer = grid_from_cube(cube)
    assert outer.x0 % 10 == 0 and outer.y0 % 10 == 0
    left, bottom, right, top = outer.bounds
    field = lonlat_box(outer.crs, left + 103.0, bottom + 96.0, right - 151.0, top - 88.0)
    inner = grid_for_field(field)
    assert inner.crs == outer.crs
    row, col = inner.offset_in(outer)
    np.testing.assert_allclose(inner.x, cube["x"].values[col : col + inner.width])
    np.testing.assert_allclose(inner.y, cube["y"].values[row : row + inner.height])


def test_offset_in_rejects_misaligned_grids() -> None:
    outer = Grid("EPSG:32631", 10.0, 0.0, 100.0, 10, 10)
    with pytest.raises(InputError, match="aligned"):
        Grid("EPSG:32631", 10.0, 5.0, 100.0, 2, 2).offset_in(outer)
    with pytest.raises(InputError, match="differ"):
        Grid("EPSG:32632", 10.0, 0.0, 100.0, 2, 2).offset_in(outer)
    assert Grid("EPSG:32631", 10.0, 30.0, 80.0, 2, 2).offset_in(outer) == (2, 3)


def test_grid_from_cube_round_trips() -> None:
    grid = Grid("EPSG:32631", 10.0, 500000.0, 5600040.0, 3, 4)
    cube = build_cube(
        np.zeros((1, 10, 4, 3), np.float32),
        np.array(["2020-01-01"], "datetime64[ns]"),
        grid.y,
        grid.x,
        {"crs": grid.crs, "resolution_m": 10.0},
        valid=np.ones((1, 4, 3), np.uint8),
    )
    assert grid_from_cube(cube) == grid


def test_field_mask_counts_pixel_centres_only() -> None:
    grid = Grid("EPSG:32631", 10.0, 500000.0, 5600050.0, 5, 5)
    # x 500010..500030 covers the centres of columns 1 and 2; y 5600012..5600041 covers the
    # centres of rows 1, 2 and 3 (5600045 is outside, 5600015 inside). Columns 0 and 3 are
    # touched but their centres are outside.
    field = lonlat_box("EPSG:32631", 500008.0, 5600012.0, 500032.0, 5600041.0)
    expected = np.zeros((5, 5), bool)
    expected[1:4, 1:3] = True
    np.testing.assert_array_equal(field_mask(field, grid), expected)
    np.testing.assert_array_equal(field_mask(Field(field, "f"), grid), expected)


def test_field_mask_on_a_cube_and_outside_the_grid() -> None:
    grid = Grid("EPSG:32631", 10.0, 500000.0, 5600050.0, 5, 5)
    cube = build_cube(
        np.zeros((1, 10, 5, 5), np.float32),
        np.array(["2020-01-01"], "datetime64[ns]"),
        grid.y,
        grid.x,
        {"crs": grid.crs, "resolution_m": 10.0},
        valid=np.ones((1, 5, 5), np.uint8),
    )
    inside = lonlat_box("EPSG:32631", 500000.0, 5600000.0, 500050.0, 5600050.0)
    assert field_mask(inside, cube).all()
    far = lonlat_box("EPSG:32631", 600000.0, 5600000.0, 600050.0, 5600050.0)
    assert not field_mask(far, cube).any()


def _lonlat_cube(x: np.ndarray, y: np.ndarray):
    return build_cube(
        np.zeros((1, 10, y.size, x.size), np.float32),
        np.array(["2021-05-01"], "datetime64[ns]"),
        y,
        x,
        {"crs": "EPSG:4326", "resolution_m": 20.0},
        valid=np.ones((1, y.size, x.size), np.uint8),
    )


def test_field_mask_on_a_lonlat_cube_uses_its_degree_spacing(cubes_dir) -> None:
    # hu-alfold is one of the shared cubes in EPSG:4326: pixels of 0.00027 x 0.00018 degrees
    # (about 20 m), which no square-metre Grid describes. A box through the centres of rows
    # 10-19 and columns 30-44, shrunk by a third of a pixel, must select exactly those.
    import xarray as xr

    with xr.open_dataset(cubes_dir / "hu-alfold_2021.nc") as ds:
        x, y = ds["x"].values.astype(np.float64), ds["y"].values.astype(np.float64)
    cube = _lonlat_cube(x, y)
    dx, dy = x[1] - x[0], y[0] - y[1]
    box = shapely.box(x[30] - dx / 3, y[19] - dy / 3, x[44] + dx / 3, y[10] + dy / 3)
    expected = np.zeros((y.size, x.size), bool)
    expected[10:20, 30:45] = True
    np.testing.assert_array_equal(field_mask(box, cube), expected)
    crs, transform, shape = cube_raster(cube)
    assert crs == "EPSG:4326" and shape == (y.size, x.size)
    assert transform @ (0.5, 0.5) == pytest.approx((x[0], y[0]), abs=1e-12)


def test_a_grid_in_metres_is_not_derived_from_a_lonlat_cube(cubes_dir) -> None:
    import xarray as xr

    with xr.open_dataset(cubes_dir / "hu-alfold_2021.nc") as ds:
        cube = _lonlat_cube(ds["x"].values[:4], ds["y"].values[:3])
    with pytest.raises(InputError, match=r"longitude/latitude grid \(EPSG:4326\); this needs"):
        grid_from_cube(cube)


def test_lonlat_cube_with_irregular_or_single_row_coordinates_is_refused() -> None:
    x = np.array([22.0, 22.0003, 22.0007, 22.0009])  # uneven steps
    y = np.array([47.3, 47.2998, 47.2996])
    # refused when the cube is built (core.cube's lattice check), or else by cube_raster
    with pytest.raises(InputError, match=r"not a regular north-up grid|no regular grid"):
        cube_raster(_lonlat_cube(x, y))
    with pytest.raises(InputError, match="single row or column"):
        cube_raster(_lonlat_cube(np.array([22.0, 22.0003]), np.array([47.3])))


def test_project_geometry_round_trip_is_submillimetre() -> None:
    field = lonlat_box("EPSG:32631", 501500.0, 5629200.0, 501700.0, 5629500.0)
    projected = project_geometry(field, "EPSG:32631")
    np.testing.assert_allclose(
        projected.bounds, (501500.0, 5629200.0, 501700.0, 5629500.0), atol=1e-3
    )


def _utm_cube(grid: Grid, attrs: dict | None = None):
    return build_cube(
        np.zeros((1, 10, grid.height, grid.width), np.float32),
        np.array(["2020-01-01"], "datetime64[ns]"),
        grid.y,
        grid.x,
        {"crs": grid.crs, "resolution_m": grid.resolution_m, **(attrs or {})},
        valid=np.ones((1, grid.height, grid.width), np.uint8),
    )


def test_a_cubes_footprint_in_degrees_holds_its_outer_pixel_edges() -> None:
    grid = Grid("EPSG:32631", 10.0, 500000.0, 5600000.0, 30, 20)
    west, south, east, north = cube_lonlat_bounds(_utm_cube(grid))
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    left, top = to_utm.transform(west, north)
    right, bottom = to_utm.transform(east, south)
    # The box in degrees holds the grid (and exceeds it by at most the UTM grid's tilt there).
    assert left <= 500000.0 + 1e-6 and right >= 500300.0 - 1e-6
    assert bottom <= 5599800.0 + 1e-6 and top >= 5600000.0 - 1e-6
    assert right - left < 301 and top - bottom < 201
    bare = _utm_cube(grid).drop_attrs()
    assert cube_lonlat_bounds(bare) is None and cube_outline(bare) is None
    # Coordinates no projection takes to degrees: no footprint, not an error.
    far = Grid("EPSG:32631", 10.0, 5e9, 5e9, 2, 2)
    assert cube_lonlat_bounds(_utm_cube(far)) is None


def test_a_cubes_outline_is_its_field_where_it_records_one() -> None:
    grid = Grid("EPSG:32631", 10.0, 500000.0, 5600000.0, 30, 20)
    field = lonlat_box(grid.crs, 500050.0, 5599850.0, 500100.0, 5599900.0)
    feature = json.dumps(Field(field, "f").to_geojson())  # as a fetched cube carries it
    outline = cube_outline(_utm_cube(grid, {"field_geojson": feature}))
    assert outline.symmetric_difference(field).area < 1e-6 * field.area
    # A self-crossing ring (a bow tie) is mended, and its area is what overlaps.
    ring = [[3, 50], [3.01, 50.01], [3.01, 50], [3, 50.01], [3, 50]]
    bow = json.dumps({"type": "Polygon", "coordinates": [ring]})
    mended = cube_outline(_utm_cube(grid, {"field_geojson": bow}))
    assert mended.is_valid and mended.area == pytest.approx(0.5 * 0.01 * 0.01)
    assert share_inside(mended, [("a", (3.0, 50.0, 3.005, 50.01))])[0] == pytest.approx(0.5)
    # Unreadable outlines fall back to the cube's footprint, not to an error.
    for text in ("not json", '{"type": "Feature"}', '{"type": "Point", "coordinates": [3, 50]}'):
        fallback = cube_outline(_utm_cube(grid, {"field_geojson": text}))
        assert fallback.bounds == pytest.approx(cube_lonlat_bounds(_utm_cube(grid)))


def test_share_inside_footprints_and_distance_to_them() -> None:
    field = shapely.box(3.0, 50.0, 3.01, 50.01)
    assert share_inside(field, []) == (0.0, None)
    assert share_inside(field, [("far", (4.0, 50.0, 4.1, 50.1))]) == (0.0, None)
    halves = [("a", (3.005, 49.0, 4.0, 51.0)), ("b", (2.0, 49.0, 3.002, 51.0))]
    share, site = share_inside(field, halves)
    assert share == pytest.approx(0.7) and site == "a"
    # Two footprints over the same part count it once.
    share, _ = share_inside(field, [("a", (2.0, 49.0, 4.0, 51.0)), ("b", (2.0, 49.0, 4.0, 51.0))])
    assert share == pytest.approx(1.0)
    assert distance_km(field, (2.0, 49.0, 4.0, 51.0)) == 0.0
    # One degree of latitude north is about 111 km; 0.1 degree east at 50 N about 7.2 km.
    assert distance_km(field, (3.0, 51.01, 3.01, 51.02)) == pytest.approx(110.6, rel=0.01)
    assert distance_km(field, (3.11, 50.0, 3.12, 50.01)) == pytest.approx(7.16, rel=0.01)


def test_share_of_a_field_outside_a_cube_by_its_outline() -> None:
    grid = Grid("EPSG:32631", 10.0, 500000.0, 5600000.0, 30, 20)  # 300 m x 200 m
    cube = _utm_cube(grid)
    inside = lonlat_box(grid.crs, 500003.0, 5599807.0, 500297.0, 5599993.0)  # few pixel centres
    assert share_outside(inside, cube) == pytest.approx(0.0, abs=1e-9)
    # 250 m of 400 m wide lie east of the cube's edge at 500300 m.
    east = Field(lonlat_box(grid.crs, 500150.0, 5599900.0, 500550.0, 5599950.0), "east")
    assert share_outside(east, cube) == pytest.approx(250 / 400, abs=1e-4)
    # Beyond two edges: 1 - (50 m x 40 m) / (100 m x 100 m).
    corner = lonlat_box(grid.crs, 500250.0, 5599740.0, 500350.0, 5599840.0)
    assert share_outside(corner, cube) == pytest.approx(1 - 50 * 40 / 100 / 100, abs=1e-4)
    far = lonlat_box(grid.crs, 600000.0, 5600000.0, 600050.0, 5600050.0)
    assert share_outside(far, cube) == 1.0


def test_share_of_a_field_outside_a_lonlat_cube() -> None:
    x = 22.0 + 0.0003 * np.arange(10)  # edges at 21.99985 and 22.00285
    y = 47.3 - 0.0002 * np.arange(10)  # edges at 47.3001 and 47.2981
    cube = _lonlat_cube(x, y)
    field = shapely.box(21.99885, 47.2990, 22.00085, 47.2995)  # 0.001 of its 0.002 outside west
    assert share_outside(field, cube) == pytest.approx(0.5, abs=1e-6)
