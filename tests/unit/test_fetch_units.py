"""The pieces of the fetch: harmonisation, dB, fusion, solar days, and loading real COGs.

The loading tests write tiny COGs whose every pixel can be checked by eye, serve them from the
local Range server, and run the real odc-stac/GDAL read path on them.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyproj
import pystac
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin
from shapely.geometry import mapping

from core.config import Settings
from core.cube import S2_BANDS, valid_from_scl
from core.errors import AccessDeniedError, InputError
from core.fetch import (
    clear_fraction,
    fuse_first_valid,
    gdal_options,
    harmonise_s2,
    has_boa_offset,
    linear_to_db,
    load_s1,
    load_s2,
    parse_baseline,
    parse_period,
    solar_day,
)
from core.grid import Grid
from tests.support.cog_server import CogServer

NAN = np.nan
TWENTY_M = {"B05", "B06", "B07", "B8A", "B11", "B12", "SCL"}
GRID = Grid("EPSG:32631", 10.0, x0=500000.0, y0=5600040.0, width=4, height=4)
SETTINGS = Settings(retries=1, timeout_s=10.0)


# --- pure functions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("04.00", (4, 0)),
        ("05.10", (5, 10)),
        ("02.12", (2, 12)),
        (" 4.0 ", (4, 0)),
        (None, None),
        ("", None),
        ("N0400", None),
    ],
)
def test_parse_baseline(text: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_baseline(text) == expected


@pytest.mark.parametrize(
    ("baseline", "when", "expected"),
    [
        ("04.00", dt.datetime(2022, 3, 1), True),
        ("05.10", dt.datetime(2024, 4, 19), True),
        ("03.01", dt.datetime(2021, 6, 1), False),
        # an OLD scene reprocessed with a NEW baseline carries the offset: property wins
        ("05.00", dt.datetime(2018, 6, 1), True),
        # a (hypothetical) new date with an old baseline has none: property wins again
        ("03.01", dt.datetime(2023, 6, 1), False),
        # no property: fall back to the date the offset went live
        (None, dt.datetime(2022, 1, 25), True),
        (None, dt.datetime(2022, 1, 24, 23), False),
    ],
)
def test_offset_decided_by_baseline_property(
    baseline: str | None, when: dt.datetime, expected: bool
) -> None:
    properties = {} if baseline is None else {"s2:processing_baseline": baseline}
    assert has_boa_offset(properties, when) is expected


def test_harmonise_with_and_without_offset() -> None:
    dn = np.array([0, 1, 1000, 1234, 11000], dtype=np.uint16)
    np.testing.assert_allclose(
        harmonise_s2(dn, offset=True), [NAN, -0.0999, 0.0, 0.0234, 1.0], rtol=0, atol=1e-7
    )
    np.testing.assert_allclose(
        harmonise_s2(dn, offset=False), [NAN, 0.0001, 0.1, 0.1234, 1.1], rtol=0, atol=1e-7
    )
    assert harmonise_s2(dn, offset=True).dtype == np.float32


def test_linear_to_db_handles_nodata_zero_and_negative() -> None:
    linear = np.array([1.0, 0.1, 0.01, 2.0, 0.0, -0.5, -32768.0, NAN, np.inf], np.float32)
    expected = [0.0, -10.0, -20.0, 3.0103, NAN, NAN, NAN, NAN, NAN]
    np.testing.assert_allclose(linear_to_db(linear), expected, atol=1e-4)
    assert linear_to_db(linear).dtype == np.float32


def test_fuse_first_valid_by_key_in_order() -> None:
    stack = np.array([[NAN, 1.0], [2.0, 3.0], [NAN, NAN], [5.0, NAN]], np.float32)
    merged, keys, first = fuse_first_valid(stack, ["a", "b", "a", "b"], missing=np.isnan)
    assert keys == ["a", "b"]
    assert first == [0, 1]
    np.testing.assert_array_equal(merged, [[NAN, 1.0], [2.0, 3.0]])
    merged, _, _ = fuse_first_valid(stack, ["a", "a", "a", "a"], missing=np.isnan)
    np.testing.assert_array_equal(merged, [[2.0, 1.0]])


@pytest.mark.parametrize(
    ("when", "lon", "day"),
    [
        (dt.datetime(2019, 1, 27, 0, 0), -4.8, dt.date(2019, 1, 27)),  # under an hour: no shift
        (dt.datetime(2019, 1, 27, 0, 30), -20.0, dt.date(2019, 1, 26)),
        (dt.datetime(2020, 1, 19, 20, 0), 100.0, dt.date(2020, 1, 20)),
        (dt.datetime(2020, 1, 19, 10, 0), 3.0, dt.date(2020, 1, 19)),
    ],
)
def test_solar_day(when: dt.datetime, lon: float, day: dt.date) -> None:
    assert solar_day(when, lon) == day


def test_parse_period() -> None:
    assert parse_period("2023-03-01", "2023-10-31") == (dt.date(2023, 3, 1), dt.date(2023, 10, 31))
    assert parse_period(dt.date(2023, 3, 1), "2023-03-01") == (dt.date(2023, 3, 1),) * 2
    with pytest.raises(InputError, match="before it starts"):
        parse_period("2023-10-31", "2023-03-01")
    with pytest.raises(InputError, match="YYYY-MM-DD"):
        parse_period("31/13/2023", "2023-03-01")
    # pandas alone reads 'may' as 1754-12-28 and '5' as 1970: neither is a date given.
    for text in ("may", "5", "2023/03/01"):
        with pytest.raises(InputError, match=f"Cannot read the date '{text}'"):
            parse_period(text, "2023-03-01")
    with pytest.raises(InputError, match="'2023-02-29' does not exist in the calendar"):
        parse_period("2023-02-29", "2023-03-01")
    # ISO 8601 with a time of day (and an offset) is the calendar day it names.
    assert parse_period("2023-03-01T10:30:00Z", "2023-03-02 23:00")[0] == dt.date(2023, 3, 1)


def test_clear_fraction_over_mask() -> None:
    import xarray as xr

    valid = np.zeros((2, 2, 2), np.uint8)
    valid[0] = [[1, 1], [0, 0]]
    cube = xr.Dataset({"valid": (("time_s2", "y", "x"), valid)})
    np.testing.assert_allclose(clear_fraction(cube), [0.5, 0.0])
    np.testing.assert_allclose(
        clear_fraction(cube, np.array([[True, False], [False, False]])), [1.0, 0.0]
    )


def test_gdal_options_follow_settings() -> None:
    options = gdal_options(Settings(retries=3, timeout_s=12.5))
    assert options["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert options["GDAL_HTTP_MAX_RETRY"] == "3"
    assert options["GDAL_HTTP_TIMEOUT"] == "13"


# --- loading hand-made COGs --------------------------------------------------------------------


def write_cog(
    path: Path,
    array: np.ndarray,
    x0: float,
    y0: float,
    res: float,
    nodata: float,
    crs: str = "EPSG:32631",
) -> dict:
    """Write a single-band COG; return the asset's proj fields."""
    path.parent.mkdir(parents=True, exist_ok=True)
    transform = from_origin(x0, y0, res, res)
    profile = {
        "driver": "COG",
        "width": array.shape[1],
        "height": array.shape[0],
        "count": 1,
        "dtype": array.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)
    return {"proj:shape": list(array.shape), "proj:transform": list(transform)[:6]}


def make_item(
    folder: Path,
    server: CogServer,
    item_id: str,
    when: dt.datetime,
    arrays: dict[str, np.ndarray],
    properties: dict,
    *,
    collection: str,
    x0: float = GRID.x0,
    y0: float = GRID.y0,
    size_m: float = 40.0,
) -> pystac.Item:
    """An item whose square ``size_m`` footprint at ``(x0, y0)`` holds COGs of ``arrays``."""
    to_lonlat = pyproj.Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    footprint = shapely.box(x0, y0 - size_m, x0 + size_m, y0)
    polygon = shapely.transform(footprint, lambda xy: np.column_stack(to_lonlat.transform(*xy.T)))
    item = pystac.Item(
        item_id,
        mapping(polygon),
        list(polygon.bounds),
        when.replace(tzinfo=dt.UTC),
        {"proj:epsg": 32631, **properties},
        collection=collection,
    )
    for name, array in arrays.items():
        nodata = -32768.0 if array.dtype == np.float32 else 0
        relative = f"{item_id}/{name}.tif"
        proj = write_cog(folder / relative, array, x0, y0, size_m / array.shape[0], nodata)
        item.add_asset(
            name,
            pystac.Asset(
                server.url_for(relative),
                media_type=pystac.MediaType.COG,
                roles=["data"],
                extra_fields=proj,
            ),
        )
    return item


def s2_arrays(ten: np.ndarray, twenty: np.ndarray, scl: np.ndarray) -> dict[str, np.ndarray]:
    """Every band: 10 m bands get ``ten`` (4x4), 20 m bands ``twenty`` (2x2), SCL ``scl``."""
    arrays = {b: (twenty if b in TWENTY_M else ten).astype(np.uint16) for b in S2_BANDS}
    arrays["SCL"] = scl.astype(np.uint8)
    return arrays


@pytest.fixture()
def cogs(tmp_path: Path):
    with CogServer(tmp_path) as server:
        yield tmp_path, server


def test_load_s2_harmonises_per_item_and_fuses_a_mixed_baseline_day(cogs) -> None:
    folder, server = cogs
    left = np.zeros((4, 4))
    left[:, :2] = 1500
    left20 = np.array([[3000, 0], [3000, 0]])
    scl_left = np.array([[4, 0], [4, 0]])
    # A (old date, reprocessed baseline 05.00: offset) covers the left half only.
    a = make_item(
        folder,
        server,
        "A",
        dt.datetime(2021, 6, 1, 10, 30),
        s2_arrays(left, left20, scl_left),
        {"s2:processing_baseline": "05.00"},
        collection="sentinel-2-l2a",
    )
    # B, five seconds later on the same day, old baseline 02.12 (no offset), covers all.
    b = make_item(
        folder,
        server,
        "B",
        dt.datetime(2021, 6, 1, 10, 30, 5),
        s2_arrays(
            np.full((4, 4), 700), np.array([[3000, 3100], [3200, 3300]]), np.array([[8, 8], [5, 5]])
        ),
        {"s2:processing_baseline": "02.12"},
        collection="sentinel-2-l2a",
    )
    # C: a fully cloudy acquisition ten days later (kept), D: no data over the grid (dropped).
    c = make_item(
        folder,
        server,
        "C",
        dt.datetime(2021, 6, 11, 10, 30),
        s2_arrays(np.full((4, 4), 5000), np.full((2, 2), 5000), np.full((2, 2), 9)),
        {"s2:processing_baseline": "03.00"},
        collection="sentinel-2-l2a",
    )
    d = make_item(
        folder,
        server,
        "D",
        dt.datetime(2021, 6, 21, 10, 30),
        s2_arrays(np.zeros((4, 4)), np.zeros((2, 2)), np.zeros((2, 2))),
        {"s2:processing_baseline": "04.00"},
        collection="sentinel-2-l2a",
    )
    stages: list[tuple[str, int, int]] = []

    times, s2, scl = load_s2(
        [d, c, b, a],
        GRID,
        settings=SETTINGS,
        signer=None,
        threads=2,
        progress=lambda *event: stages.append(event),
    )

    np.testing.assert_array_equal(
        times, np.array(["2021-06-01T10:30:00", "2021-06-11T10:30:00"], "datetime64[ns]")
    )
    b02 = S2_BANDS.index("B02")
    b05 = S2_BANDS.index("B05")
    # left half from A: (1500 - 1000) / 1e4; right half from B: 700 / 1e4
    np.testing.assert_allclose(s2[0, b02], [[0.05, 0.05, 0.07, 0.07]] * 4, atol=1e-7)
    # 20 m band: A's 0.2 on the left; B's 20 m pixels replicated 2x2 on the right
    np.testing.assert_allclose(
        s2[0, b05],
        [
            [0.2, 0.2, 0.31, 0.31],
            [0.2, 0.2, 0.31, 0.31],
            [0.2, 0.2, 0.33, 0.33],
            [0.2, 0.2, 0.33, 0.33],
        ],
        atol=1e-7,
    )
    np.testing.assert_array_equal(scl[0], [[4, 4, 8, 8], [4, 4, 8, 8], [4, 4, 5, 5], [4, 4, 5, 5]])
    np.testing.assert_array_equal(scl[1], np.full((4, 4), 9))
    np.testing.assert_allclose(s2[1], 0.5, atol=1e-7)
    np.testing.assert_array_equal(
        valid_from_scl(scl, s2)[0], [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    )
    assert not valid_from_scl(scl, s2)[1].any()
    assert stages[-1][0] == "loading 4 Sentinel-2 scenes"
    assert stages[-1][1] == stages[-1][2] > 0


def test_nearest_replicates_20m_pixels_in_a_window_at_an_odd_offset(cogs) -> None:
    """A grid whose left edge is 10 m (half a 20 m pixel) into a larger COG: only the window is
    read, and each 10 m pixel takes the 20 m pixel it lies in."""
    folder, server = cogs
    twenty = (np.arange(16).reshape(4, 4) * 100 + 1000).astype(np.uint16)  # 80 m x 80 m
    ten = (np.arange(64).reshape(8, 8) + 2000).astype(np.uint16)
    item = make_item(
        folder,
        server,
        "W",
        dt.datetime(2020, 5, 5, 10),
        s2_arrays(ten, twenty, np.full((4, 4), 4)),
        {"s2:processing_baseline": "02.14"},
        collection="sentinel-2-l2a",
        x0=GRID.x0 - 20.0,
        y0=GRID.y0 + 20.0,
        size_m=80.0,
    )
    window = Grid("EPSG:32631", 10.0, x0=GRID.x0 - 10.0, y0=GRID.y0 + 10.0, width=4, height=4)
    times, s2, _ = load_s2([item], window, settings=SETTINGS, signer=None, threads=1)
    assert times.size == 1
    # window columns/rows 1..4 of the 10 m COG
    np.testing.assert_allclose(s2[0, S2_BANDS.index("B04")], ten[1:5, 1:5] / 1e4, atol=1e-7)
    # 10 m pixel j (from the COG's edge: j + 1) lies in 20 m pixel (j + 1) // 2
    index = (np.arange(4) + 1) // 2
    np.testing.assert_allclose(
        s2[0, S2_BANDS.index("B11")], twenty[np.ix_(index, index)] / 1e4, atol=1e-7
    )


def s1_arrays(vv: np.ndarray, vh: np.ndarray) -> dict[str, np.ndarray]:
    return {"vv": vv.astype(np.float32), "vh": vh.astype(np.float32)}


def test_load_s1_merges_same_day_same_orbit_and_converts_to_db(cogs) -> None:
    folder, server = cogs
    half = np.full((4, 4), -32768.0)
    half[:, :2] = 0.1
    whole = np.full((4, 4), 0.01)
    whole[3, 3] = 0.0
    e = make_item(
        folder,
        server,
        "E",
        dt.datetime(2021, 6, 2, 17, 30),
        s1_arrays(half, half),
        {"sat:orbit_state": "ascending"},
        collection="sentinel-1-rtc",
    )
    f = make_item(
        folder,
        server,
        "F",
        dt.datetime(2021, 6, 2, 17, 30, 25),
        s1_arrays(whole, whole),
        {"sat:orbit_state": "ascending"},
        collection="sentinel-1-rtc",
    )
    g = make_item(
        folder,
        server,
        "G",
        dt.datetime(2021, 6, 2, 5, 50),
        s1_arrays(np.ones((4, 4)), np.full((4, 4), 0.1)),
        {"sat:orbit_state": "descending"},
        collection="sentinel-1-rtc",
    )

    times, s1, orbit = load_s1([e, f, g], GRID, settings=SETTINGS, signer=None, threads=2)

    np.testing.assert_array_equal(
        times, np.array(["2021-06-02T05:50", "2021-06-02T17:30"], "datetime64[ns]")
    )
    assert list(orbit) == ["descending", "ascending"]
    np.testing.assert_allclose(s1[0, 0], 0.0, atol=1e-5)
    np.testing.assert_allclose(s1[0, 1], -10.0, atol=1e-5)
    expected = np.full((4, 4), -20.0)
    expected[:, :2] = -10.0
    expected[3, 3] = NAN
    np.testing.assert_allclose(s1[1, 0], expected, atol=1e-5)
    np.testing.assert_allclose(s1[1, 1], expected, atol=1e-5)


def test_refused_cog_reads_raise_access_denied(cogs) -> None:
    folder, server = cogs
    item = make_item(
        folder,
        server,
        "E",
        dt.datetime(2021, 6, 2, 17, 30),
        s1_arrays(np.ones((4, 4)), np.ones((4, 4))),
        {"sat:orbit_state": "ascending"},
        collection="sentinel-1-rtc",
    )
    server.faults.deny("/E/", status=403)
    with pytest.raises(AccessDeniedError, match="HTTP 403"):
        load_s1([item], GRID, settings=SETTINGS, signer=None, threads=1)


def test_single_polarisation_scenes_load_with_nan_for_the_missing_band(cogs) -> None:
    """odc-stac takes its band list from the first item; a VV-only scene first must neither
    fail the load nor hide the other scenes' VH."""
    folder, server = cogs
    vv_only = make_item(
        folder,
        server,
        "V",
        dt.datetime(2021, 6, 2, 17, 30),
        {"vv": np.ones((4, 4), np.float32)},
        {"sat:orbit_state": "ascending"},
        collection="sentinel-1-rtc",
    )
    dual = make_item(
        folder,
        server,
        "D",
        dt.datetime(2021, 6, 14, 17, 30),
        s1_arrays(np.ones((4, 4)), np.full((4, 4), 0.1)),
        {"sat:orbit_state": "ascending"},
        collection="sentinel-1-rtc",
    )
    times, s1, _ = load_s1([vv_only, dual], GRID, settings=SETTINGS, signer=None, threads=1)
    assert times.size == 2
    np.testing.assert_allclose(s1[:, :, 0, 0], [[0.0, NAN], [0.0, -10.0]], atol=1e-5)


# --- which tile a pixel comes from, and what a failed read says (review 11) ---------------


def _item(item_id: str, when: str, **properties: object) -> pystac.Item:
    return pystac.Item(item_id, None, None, dt.datetime.fromisoformat(when), dict(properties))


def test_item_crs_reads_proj_code_or_epsg_of_the_item_or_its_assets() -> None:
    from core.fetch import item_crs

    assert item_crs(_item("a", "2024-04-19T10:00:00+00:00", **{"proj:code": "epsg:32631"})) == (
        "EPSG:32631"
    )
    assert item_crs(_item("b", "2024-04-19T10:00:00+00:00", **{"proj:epsg": 32632})) == (
        "EPSG:32632"
    )
    item = _item("c", "2024-04-19T10:00:00+00:00", **{"proj:epsg": None})
    item.add_asset("B04", pystac.Asset("http://x/B04.tif", extra_fields={"proj:epsg": 32630}))
    assert item_crs(item) == "EPSG:32630"
    assert item_crs(_item("d", "2024-04-19T10:00:00+00:00")) is None


def test_read_order_puts_a_days_tiles_in_the_grids_crs_before_the_others_at_equal_time() -> None:
    from core.fetch import read_order

    same = "2024-04-19T10:30:00+00:00"
    items = [
        _item("S2A_T31UGS", same, **{"proj:epsg": 32631}),  # west zone: sorts first by id
        _item("S2A_T32ULB", same, **{"proj:epsg": 32632}),  # the grid's zone
        _item("S2A_T31UGS_earlier", "2024-04-19T10:20:00+00:00", **{"proj:epsg": 32631}),
        _item("S2A_T32ULB_next_day", "2024-04-20T10:30:00+00:00", **{"proj:epsg": 32632}),
    ]
    keys = [("d1",), ("d1",), ("d1",), ("d2",)]
    assert read_order(items, [0, 1, 2, 3], keys, "EPSG:32632") == [2, 1, 0, 3]
    assert read_order(items, [3, 1, 0], keys, "EPSG:32631") == [0, 1, 3]


def test_only_assets_keeps_the_assets_read_and_leaves_the_item_as_it_was() -> None:
    from core.fetch import only_assets

    item = _item("x", "2024-04-19T10:00:00+00:00")
    for name in ("B04", "SCL", "visual", "AOT"):
        item.add_asset(name, pystac.Asset(f"http://x/{name}.tif"))
    kept = only_assets(item, ("B04", "SCL", "B08"))
    assert set(kept.assets) == {"B04", "SCL"}
    assert set(item.assets) == {"B04", "SCL", "visual", "AOT"}


def test_error_detail_names_the_file_and_the_root_cause_not_see_previous() -> None:
    from core.fetch import error_detail

    try:
        try:
            try:
                raise OSError("TIFFFillTile:Read error at tile 0; got 3333 bytes, expected 7247")
            except OSError as inner:
                raise OSError("T31UES_B02_10m.tif, band 1: IReadBlock failed") from inner
        except OSError as middle:
            raise OSError("Read failed. See previous exception for details.") from middle
    except OSError as outer:
        detail = error_detail(outer)
    assert detail == (
        "T31UES_B02_10m.tif, band 1: IReadBlock failed; TIFFFillTile:Read error at tile 0; "
        "got 3333 bytes, expected 7247"
    )
    assert error_detail(RuntimeError("CURL error: Empty reply from server.")) == (
        "CURL error: Empty reply from server"
    )
    assert error_detail(RuntimeError("")) == "RuntimeError"


def test_processing_recency_reads_baseline_then_generation_time(stac_dir: Path) -> None:
    """From a real PC item (baseline 02.12, generated 2020-10-06), and the same item as
    reprocessed: a higher baseline is newer whatever its generation time; at one baseline the
    later generation; without the property the id's generation stamp."""
    from core.fetch import processing_recency

    path = stac_dir / "odc-stac" / "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"
    real = pystac.Item.from_file(str(path))
    first = processing_recency(real)
    assert first[:2] == (2, 12)
    assert first[2] == dt.datetime(2020, 10, 6, 8, 5, 31, 830000, tzinfo=dt.UTC).timestamp()
    again = real.clone()
    again.properties["s2:processing_baseline"] = "05.00"
    again.properties["s2:generation_time"] = "2019-12-01T00:00:00Z"  # odd, but the baseline rules
    assert processing_recency(again) > first
    later = real.clone()
    later.properties["s2:generation_time"] = "2021-01-01T00:00:00.000Z"
    assert processing_recency(later) > first
    bare = real.clone()
    del bare.properties["s2:generation_time"], bare.properties["s2:processing_baseline"]
    assert processing_recency(bare) == (
        -1,
        -1,
        dt.datetime(2020, 10, 6, 8, 5, 31, tzinfo=dt.UTC).timestamp(),
    )
    s1 = _item(
        "S1A_IW_GRDH_1SDV_20210105T053213_20210105T053238_036002_04389D_rtc",
        "2021-01-05T05:32:13+00:00",
    )
    assert processing_recency(s1) == (-1, -1, 0.0)


def test_read_order_puts_the_newest_processing_of_an_acquisition_first() -> None:
    from core.fetch import read_order

    same = "2019-06-29T21:25:29+00:00"
    base = "S2B_MSIL2A_20190629T212529_R043_T06VVN_"
    items = [
        _item(
            f"{base}20201006T080531",
            same,
            **{"s2:processing_baseline": "02.12", "proj:epsg": 32606},
        ),
        _item(
            f"{base}20230501T120000",
            same,
            **{"s2:processing_baseline": "05.00", "proj:epsg": 32606},
        ),
        _item(
            f"{base}20240209T070000",
            same,
            **{"s2:processing_baseline": "05.00", "proj:epsg": 32606},
        ),
        _item(
            f"{base}20240209T070000_T07",
            same,
            **{"s2:processing_baseline": "05.11", "proj:epsg": 32607},
        ),
    ]
    keys = [("d",)] * 4
    # the grid's own CRS first (no second resampling), then newest processing
    assert read_order(items, [0, 1, 2, 3], keys, "EPSG:32606") == [2, 1, 0, 3]


def test_the_searched_days_take_the_margin_either_side_and_never_pass_today() -> None:
    """Review 29: searching past today was not seen by any test (the shared periods are old)."""
    from core.fetch import searched_period

    first, last = dt.date(2018, 5, 1), dt.date(2018, 6, 15)
    assert searched_period(first, last, 30) == (dt.date(2018, 4, 1), dt.date(2018, 7, 15))
    assert searched_period(first, last, 0) == (first, last)
    today = dt.date.today()
    recent = today - dt.timedelta(days=10)
    assert searched_period(recent - dt.timedelta(days=20), recent, 30)[1] == today
    later = today + dt.timedelta(days=3)  # a period running on past today keeps its end
    assert searched_period(recent, later, 30)[1] == later


def _items_on(days: list[dt.date], assets: tuple[str, ...] = ()) -> list[pystac.Item]:
    return [
        pystac.Item(
            f"S2_{day:%Y%m%d}",
            geometry=None,
            bbox=None,
            datetime=dt.datetime.combine(day, dt.time(10, 30)),
            properties={},
            assets={name: pystac.Asset(f"http://x/{name}.tif") for name in assets},
        )
        for day in days
    ]


def test_a_request_too_large_is_told_how_long_a_period_would_fit_its_margins_left_out() -> None:
    """100 x 100 px, 20 acquisition days found over 160 searched days (a 100-day period and 30
    days either side): 2e5 pixel-dates against 1.5e5 allowed fit 120 searched days, of which
    the margins take 60: a period of about 60 days fits (review 29: the advice without the
    margins, 120, passed)."""
    from core.fetch import check_request_size

    grid = Grid("EPSG:32631", 10.0, x0=500000.0, y0=5600000.0, width=100, height=100)
    first = dt.date(2018, 3, 2)  # the searched span: the period and its margins
    last = first + dt.timedelta(days=159)
    days = [first + dt.timedelta(days=8 * i) for i in range(20)]
    check_request_size(grid, _items_on(days), first, last, most=2e5, margin_days=30)  # fits
    with pytest.raises(InputError, match=r"about 60 days fit for this field"):
        check_request_size(grid, _items_on(days), first, last, most=1.5e5, margin_days=30)


def test_a_scene_with_the_narrow_near_infrared_band_only_is_complete() -> None:
    """NDVI takes B08 or B8A (core.indices): a scene with B8A and no B08 lacks nothing; one with
    neither lacks the near infrared (review 29: B8A not counted passed)."""
    from core.fetch import incomplete_scene

    day = [dt.date(2018, 5, 1)]
    assert incomplete_scene(_items_on(day, ("SCL", "B04", "B8A"))[0]) is None
    assert incomplete_scene(_items_on(day, ("SCL", "B04", "B08"))[0]) is None
    assert incomplete_scene(_items_on(day, ("SCL", "B04"))[0]) == "S2_20180501 (no near infrared)"
    assert incomplete_scene(_items_on(day, ("B08",))[0]) == "S2_20180501 (no SCL, no red)"
