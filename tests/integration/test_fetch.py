"""``python -m core fetch`` against real cubes published like Planetary Computer.

Each shared UTM cube is served as PC-like STAC items and COGs by local servers
(``published_site``); the fetch must give the source cube's pixels back on the field's window:
reflectance to 1e-4, S1 to 0.01 dB, SCL and the clear mask equal, the same dates (one frame per
solar day). The real client stack runs: pystac-client over HTTP, GDAL range reads, odc-stac.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pystac
import pytest
import shapely
import xarray as xr

from core.cache import CubeCache, cache_key, fetch_cached
from core.cli import main
from core.config import Settings
from core.cube import read_cube, valid_from_scl
from core.curve import ndvi_curve
from core.errors import InputError, NetworkError, NoScenesError
from core.fetch import PERIOD_MARGIN_DAYS, clear_gdal_http_cache, fetch_cube, searched_period
from core.field import Field
from core.grid import field_mask, grid_for_field, grid_from_cube
from core.timeline import calendar_day
from tests.support.site import PublishedSite

ROOT = Path(__file__).resolve().parents[2]


# --- helpers -----------------------------------------------------------------------------------


def write_field(site: PublishedSite, folder: Path, inset_m: float = 30.0) -> tuple[Field, Path]:
    """The site's field as a GeoJSON file."""
    field = Field(site.field(inset_m), f"{site.name} field")
    path = folder / "field.geojson"
    path.write_text(json.dumps(field.to_geojson()), encoding="utf-8")
    return field, path


def period_of(site: PublishedSite) -> tuple[str, str]:
    """First and last published S2 day."""
    days = site.s2_times().astype("datetime64[D]")
    return str(days.min()), str(days.max())


def cli_env(site: PublishedSite, cache_dir: Path, retries: int = 2) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "STAC_API_URL": site.stac_url,
            "FIELDFLOW_CACHE_DIR": str(cache_dir),
            "FIELDFLOW_RETRIES": str(retries),
            "FIELDFLOW_TIMEOUT_S": "20",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
        }
    )
    return env


def run_fetch_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", "fetch", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def first_per_day(times: np.ndarray) -> np.ndarray:
    """Indices of the first acquisition of each UTC day (the sites lie within 3 h of UTC
    noon, so UTC days are solar days)."""
    days = times.astype("datetime64[D]")
    return np.array([i for i in range(len(days)) if i == 0 or days[i] != days[i - 1]])


def assert_reproduces(
    fetched: xr.Dataset,
    source: xr.Dataset,
    start: str,
    end: str,
    margin_days: int = PERIOD_MARGIN_DAYS,
) -> None:
    """``fetched`` equals ``source`` on fetched's window, one S2 frame per day, S1 in the
    period and its margin (the sites publish S2 of the period only)."""
    row, col = grid_from_cube(fetched).offset_in(grid_from_cube(source))
    height, width = fetched.sizes["y"], fetched.sizes["x"]
    window = {"y": slice(row, row + height), "x": slice(col, col + width)}
    s2_src = source.isel(time_s2=first_per_day(source["time_s2"].values), **window)

    np.testing.assert_array_equal(fetched["time_s2"].values, s2_src["time_s2"].values)
    np.testing.assert_allclose(fetched["s2"].values, s2_src["s2"].values, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(fetched["scl"].values, s2_src["scl"].values)
    np.testing.assert_array_equal(fetched["valid"].values, s2_src["valid"].values)

    if "s1" not in source.data_vars or source.sizes.get("time_s1", 0) == 0:
        assert "s1" not in fetched.data_vars
        return
    days = source["time_s1"].values.astype("datetime64[D]")
    before, after = searched_period(
        dt.date.fromisoformat(start), dt.date.fromisoformat(end), margin_days
    )
    in_period = (days >= np.datetime64(before)) & (days <= np.datetime64(after))
    s1_src = source.isel(time_s1=np.flatnonzero(in_period), **window)
    np.testing.assert_array_equal(fetched["time_s1"].values, s1_src["time_s1"].values)
    np.testing.assert_allclose(fetched["s1"].values, s1_src["s1"].values, atol=0.01, rtol=0)
    assert set(fetched["orbit_state"].values) <= {"ascending", "descending"}


# --- the command on three real sites -----------------------------------------------------------


def test_cli_reproduces_flanders_with_offsets_split_tiles_retries_and_cache(
    flanders_site: PublishedSite, tmp_path: Path
) -> None:
    """be-flanders-a (EPSG:32631): 2017 scenes, one claiming baseline 05.00 (offset before
    2022), one split over two overlapping tiles; a 503 on the search and on a COG are retried.
    A second identical run is served from the cache without a single request."""
    site = flanders_site
    field, field_path = write_field(site, tmp_path)
    start, end = period_of(site)
    reprocessed = [i for i in site.s2_items if i["properties"]["s2:processing_baseline"] == "05.00"]
    assert reprocessed and reprocessed[0]["properties"]["datetime"] < "2022"
    env = cli_env(site, tmp_path / "cache")
    out = tmp_path / "cube.nc"
    args = ["--geojson", str(field_path), "--start", start, "--end", end, "--out", str(out)]

    site.stac_server.faults.fail_next(1, 503, prefix=site.stac_server.search_path)
    site.cog_server.faults.fail_next(1, 503, prefix="/sentinel2-l2/")
    started = time.monotonic()
    first = run_fetch_cli(args, env)
    elapsed = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    fetched = read_cube(out)
    assert_reproduces(fetched, site.cube, start, end)
    assert fetched.attrs["crs"] == "EPSG:32631"
    assert fetched.attrs["site"] == field.name
    assert json.loads(fetched.attrs["field_geojson"])["geometry"]["type"] == "Polygon"
    assert fetched.attrs["source"].startswith(f"STAC API {site.stac_url}: sentinel-2-l2a")  # not PC
    statuses = [e.status for e in site.stac_server.searches()]
    assert statuses[0] == 503 and statuses[1] == 200
    assert any(e.status == 503 for e in site.cog_server.requests)
    assert any(e.status == 206 for e in site.cog_server.requests)  # windows, not whole files
    n_items = len(site.s2_items)
    assert f"Scenes found: sentinel-2-l2a {n_items}, sentinel-1-rtc" in first.stdout
    assert f"S2 {fetched.sizes['time_s2']}" in first.stdout
    assert "Clear fraction of the field per S2 frame" in first.stdout
    print(
        f"flanders fetch via CLI: {elapsed:.1f} s for {n_items} S2 and "
        f"{len(site.s1_items)} S1 items"
    )

    site.reset()
    out2 = tmp_path / "again.nc"
    second = run_fetch_cli([*args[:-1], str(out2)], env)
    assert second.returncode == 0, second.stderr
    assert "from the cache" in second.stdout
    assert site.stac_server.requests == []
    assert site.cog_server.requests == []
    again = read_cube(out2)
    xr.testing.assert_identical(again.drop_attrs(), fetched.drop_attrs())


def test_cli_reproduces_arusha_in_the_southern_hemisphere_merging_same_day_tiles(
    published_site, tmp_path: Path
) -> None:
    """tz-arusha (EPSG:32737, 20 m bands only): Nov 2019 - Jan 2020 holds two days with two
    acquisitions each; the fetch keeps one frame per day (the first valid pixels)."""
    site = published_site("tz-arusha", start="2019-11-01", end="2020-01-31")
    times = site.s2_times()
    assert len(np.unique(times.astype("datetime64[D]"))) == len(times) - 2
    _, field_path = write_field(site, tmp_path)
    start, end = period_of(site)
    out = tmp_path / "cube.nc"
    result = run_fetch_cli(
        ["--geojson", str(field_path), "--start", start, "--end", end, "--out", str(out)],
        cli_env(site, tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr
    fetched = read_cube(out)
    assert fetched.attrs["crs"] == "EPSG:32737"
    assert fetched["y"].values.min() > 9e6  # false northing of the south
    assert fetched.sizes["time_s2"] == len(times) - 2
    assert_reproduces(fetched, site.cube, start, end)


def test_cli_reproduces_the_spanish_field_without_s1(published_site, tmp_path: Path) -> None:
    """es-field (EPSG:32630, B04/B08 only, NaN outside the field, SCL with 10 m detail, times
    at midnight UTC). Its stored ``valid`` came from another mask; the fetch derives ``valid``
    from SCL, so it is compared with the SCL rule applied to the source."""
    site = published_site("es-field", max_dates=12)
    _, field_path = write_field(site, tmp_path, inset_m=20.0)
    start, end = period_of(site)
    out = tmp_path / "cube.nc"
    result = run_fetch_cli(
        [
            "--geojson",
            str(field_path),
            "--start",
            start,
            "--end",
            end,
            "--out",
            str(out),
            "--no-cache",
        ],
        cli_env(site, tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr
    fetched = read_cube(out)
    source = site.cube.copy()
    source["valid"] = (
        ("time_s2", "y", "x"),
        valid_from_scl(source["scl"].values, source["s2"].values),
    )
    assert_reproduces(fetched, source, start, end)
    assert "Sentinel-1 unavailable (no scenes" in result.stdout
    assert not (tmp_path / "cache").exists()  # --no-cache writes nothing


# --- Sentinel-1 refused, cache repair ----------------------------------------------------------


def test_s1_assets_refused_gives_an_s2_only_result_that_says_so(published_site) -> None:
    # fresh servers: GDAL caches /vsicurl/ reads per URL, and this test needs real refusals
    site = published_site("be-flanders-a", fresh=True, max_dates=3)
    site.cog_server.faults.deny("/sentinel1-grd-rtc/", 403)
    settings = Settings(stac_api_url=site.stac_url, retries=1)
    field = Field(site.field(), "refused")
    result = fetch_cube(field, *period_of(site), settings=settings, threads=2)
    assert result.s1_status == "denied"
    assert result.s1_message.startswith(
        "Sentinel-1 unavailable (access refused): continuing with Sentinel-2 only."
    )
    assert "s1" not in result.cube.data_vars
    assert result.frames_loaded == {"s2": 3, "s1": 0}
    assert 0 < result.scenes_found["sentinel-1-rtc"] <= len(site.s1_items)
    assert any(e.status == 403 for e in site.cog_server.requests)
    assert_reproduces(result.cube, site.cube.drop_vars(["s1", "time_s1"]), *period_of(site))


def test_a_refused_read_is_tried_again_once_the_server_answers(published_site) -> None:
    # GDAL remembers per process which URLs failed, and answered later reads of them from
    # that memory without asking: after one refusal, every later Run in the app's process
    # failed the same way, for every user, until a restart.
    import pyogrio  # noqa: F401 - its own libgdal in the process, as in the app after an upload

    from core.errors import AccessDeniedError

    site = published_site("be-flanders-a", fresh=True, max_dates=3)
    settings = Settings(stac_api_url=site.stac_url, retries=0)
    field = Field(site.field(), "refused, then allowed")
    site.cog_server.faults.deny("/sentinel2-l2/", 403)
    with pytest.raises(AccessDeniedError, match="refused"):
        fetch_cube(field, *period_of(site), settings=settings, threads=2, include_s1=False)
    site.cog_server.faults.clear()
    site.cog_server.clear_requests()
    result = fetch_cube(field, *period_of(site), settings=settings, threads=2, include_s1=False)
    assert result.frames_loaded["s2"] == 3
    assert site.cog_server.requests  # read again, not answered from GDAL's memory


def test_transfers_cut_short_are_read_again_and_the_cube_is_the_same(
    published_site, tmp_path: Path
) -> None:
    """Connections closed part-way through an answer (in its headers, in the TIFF header,
    in the pixels): each read is asked again, and the cube is the one served."""
    site = published_site("be-flanders-a", fresh=True, max_dates=4)
    settings = Settings(stac_api_url=site.stac_url, retries=3, cache_dir=tmp_path)
    field = Field(site.field(), "cut")
    start, end = period_of(site)
    for after_bytes in (60, 400, 3000, 12000):
        clear_gdal_http_cache()
        site.cog_server.faults.cut_next(2, after_bytes=after_bytes, prefix="/sentinel2-l2/")
        result = fetch_cube(field, start, end, settings=settings, threads=2, include_s1=False)
        assert result.frames_loaded["s2"] == 4 and result.skipped_scenes == ()
        assert_reproduces(result.cube, site.cube.drop_vars(["s1", "time_s1"]), start, end)
    cut = [e for e in site.cog_server.requests if e.fault == "cut"]
    assert len(cut) == 8


def test_a_dropped_connection_is_read_again_and_a_missing_scene_is_left_out_and_named(
    published_site, tmp_path: Path
) -> None:
    """One connection closed without an answer used to fail the whole fetch (GDAL retries
    HTTP errors, not a dropped connection), and so did one scene whose file the server does
    not have (catalogues hold broken asset links); S1 then lost every frame for one of them."""
    site = published_site("be-flanders-a", fresh=True, max_dates=4)
    settings = Settings(stac_api_url=site.stac_url, retries=2, cache_dir=tmp_path)
    field = Field(site.field(), "flaky")
    start, end = period_of(site)
    site.cog_server.faults.drop_next(1, prefix="/sentinel2-l2/")
    result = fetch_cube(field, start, end, settings=settings, threads=2, include_s1=False)
    assert result.frames_loaded["s2"] == 4 and result.skipped_scenes == ()
    assert_reproduces(result.cube, site.cube.drop_vars(["s1", "time_s1"]), start, end)

    # A scene the server has no file for: left out, named, the rest kept, nothing cached.
    gone = site.s2_items[1]
    folder = gone["assets"]["B04"]["href"].split("://", 1)[1].split("/", 1)[1].rsplit("/", 1)[0]
    site.cog_server.faults.deny(f"/{folder}/", 404)
    clear_gdal_http_cache()  # GDAL would answer from what it read above, without asking
    result = fetch_cached(field, start, end, settings=settings, threads=2, include_s1=False)
    assert result.skipped_scenes == (f"{gone['id']} (HTTP 404)",)
    assert result.frames_loaded["s2"] == 3
    assert gone["id"] in result.skipped_note and "Left out 1 scene(s)" in result.skipped_note
    assert not list(tmp_path.glob("*.json"))  # not cached: asked again, it is tried again
    kept = np.datetime64(gone["properties"]["datetime"][:10], "D")
    assert kept not in result.cube["time_s2"].values.astype("datetime64[D]")
    # The command line says it in a note line and exits 0.
    _, field_path = write_field(site, tmp_path)
    done = run_fetch_cli(
        ["--geojson", str(field_path), "--start", start, "--end", end, "--out",
         str(tmp_path / "cube.nc"), "--no-s1", "--no-cache"],
        cli_env(site, tmp_path / "cache"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"note: Left out 1 scene(s) the server has no file for: {gone['id']}" in done.stdout
    assert "Failed to load" not in done.stderr  # odc-stac's own log lines stay off the console
    # Past MAX_SKIPPED_SCENES the fetch fails, naming what it left out.
    site.cog_server.faults.deny("/sentinel2-l2/", 404)
    clear_gdal_http_cache()
    with pytest.raises(NetworkError, match="the server has no file for a scene"):
        fetch_cube(field, start, end, settings=settings, threads=2, include_s1=False)


def test_a_field_covering_no_pixel_centre_is_refused_before_any_request(
    flanders_site: PublishedSite,
) -> None:
    """A sliver 500 m long and 2.5 m wide between two rows of pixel centres: fetch used to
    download its scenes and report 0 % clear on every date (review 5, F7)."""
    from pyproj import Transformer
    from shapely import box, transform

    from core.errors import FieldError
    from core.grid import field_mask

    site = flanders_site
    centre = site.field().centroid
    to_utm = Transformer.from_crs("EPSG:4326", site.crs, always_xy=True)
    x, y = to_utm.transform(centre.x, centre.y)
    row = (y // 10) * 10 + 5  # a pixel centre row of the 10 m lattice
    sliver_utm = box(x - 250, row + 1.0, x + 250, row + 3.5)
    back = Transformer.from_crs(site.crs, "EPSG:4326", always_xy=True)
    field = Field(transform(sliver_utm, back.transform, interleaved=False), "sliver")
    assert not field_mask(field, grid_for_field(field)).any()
    site.reset()
    settings = Settings(stac_api_url=site.stac_url, retries=0)
    with pytest.raises(FieldError, match="'sliver' covers no pixel centre of its 10 m grid"):
        fetch_cube(field, *period_of(site), settings=settings, threads=2)
    assert not site.stac_server.searches() and not site.cog_server.requests


def test_a_field_partly_outside_the_imagery_is_said_and_measured_on_the_rest(
    flanders_site: PublishedSite, tmp_path: Path
) -> None:
    """A field shifted so that most of it lies east of the published scenes: fetch and ndvi
    counted the never-imaged part as cloud (clear shares of 16 %, "0 observed") without a word
    (review 5, F6). Now they say how much is outside and measure the rest."""
    from shapely import affinity

    site = flanders_site
    whole = site.field()
    west, _, east, _ = whole.bounds
    field = Field(affinity.translate(site.field(150.0), xoff=(east - west) * 0.6), "Straddle")
    path = tmp_path / "straddle.geojson"
    path.write_text(json.dumps(field.to_geojson()), encoding="utf-8")
    start, end = period_of(site)
    env = cli_env(site, tmp_path / "cache")
    out = tmp_path / "cube.nc"
    done = run_fetch_cli(
        ["--geojson", str(path), "--start", start, "--end", end, "--out", str(out), "--no-s1"], env
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"note: about \d+% of the field is imaged by no Sentinel-2", done.stdout)
    csv_path = tmp_path / "curve.csv"
    ndvi = subprocess.run(
        [sys.executable, "-m", "core", "ndvi", "--cube", str(out), "--geojson", str(path),
         "--start", start, "--end", end, "--method", "linear", "--out", str(csv_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ndvi.returncode == 0, ndvi.stderr
    assert "of the field's pixels in the cube are imaged by no Sentinel-2" in ndvi.stdout
    observed = int(re.search(r"\((\d+) observed\)", ndvi.stdout).group(1))
    assert observed > 0  # clear days of the part inside count as observed


def test_items_whose_projection_metadata_disagree_are_said_not_a_traceback(
    published_site,
) -> None:
    """Items saying EPSG:4326 while their proj:bbox and proj:transform are in UTM (a catalogue
    with sloppy metadata): odc-geo's ValueError came out as a traceback (review 5, F5)."""
    import copy

    site = published_site("be-flanders-a", fresh=True, max_dates=2)
    sloppy = []
    for item in site.s2_items:
        item = copy.deepcopy(item)
        item["properties"]["proj:epsg"] = 4326
        for asset in item["assets"].values():
            if "proj:epsg" in asset:
                asset["proj:epsg"] = 4326
        sloppy.append(item)
    site.stac_server.add_items({"sentinel-2-l2a": sloppy})
    settings = Settings(stac_api_url=site.stac_url, retries=0)
    field = Field(site.field(), "sloppy")
    with pytest.raises(NetworkError, match="projection metadata"):
        fetch_cube(field, *period_of(site), settings=settings, threads=2, include_s1=False)


def test_a_request_too_large_to_run_is_refused_before_any_pixel_is_read(
    flanders_site: PublishedSite,
) -> None:
    # The limit is on the field grid's pixels times its S2 acquisition days; set it just under
    # this request so that the real search finds the real items, and nothing is loaded.
    site = flanders_site
    field = Field(site.field(), "large")
    grid = grid_for_field(field)
    start, end = period_of(site)
    days = len(np.unique(site.s2_times().astype("datetime64[D]")))
    most = grid.width * grid.height * days - 1
    site.reset()
    settings = Settings(stac_api_url=site.stac_url, retries=1, max_pixel_dates=most)
    with pytest.raises(InputError, match="This request is too large to run") as caught:
        fetch_cube(field, start, end, settings=settings, threads=2)
    message = str(caught.value)
    assert f"{grid.height} x {grid.width} px over {days} Sentinel-2 acquisition days" in message
    assert "FIELDFLOW_MAX_PIXEL_DATES" in message and "days fit for this field" in message
    assert len(site.stac_server.searches()) >= 1
    assert site.cog_server.requests == []  # refused before a single range read
    # At the limit itself it loads.
    site.reset()
    exact = Settings(stac_api_url=site.stac_url, retries=1, max_pixel_dates=most + 1)
    result = fetch_cube(field, start, end, settings=exact, include_s1=False, threads=2)
    assert result.frames_loaded["s2"] == days


def test_a_fetch_prunes_the_cache_to_its_cap(flanders_site: PublishedSite, tmp_path: Path) -> None:
    """FIELDFLOW_CACHE_MAX_GB: after a fetch is stored, the least recently used entries go
    until the folder fits; the new one stays, whatever the cap."""
    site = flanders_site
    settings = Settings(stac_api_url=site.stac_url, retries=1, cache_dir=tmp_path)
    start, end = period_of(site)
    kwargs = {"include_s1": False, "threads": 2}
    earlier = Field(site.field(), "earlier")
    fetch_cached(earlier, start, end, settings=settings, **kwargs)
    (old,) = list(tmp_path.glob("*.json"))
    when = time.time() - 2 * 3600  # used two hours ago
    for path in (old, old.with_suffix(".nc")):
        os.utime(path, (when, when))
    tiny = dataclasses.replace(settings, cache_max_gb=1e-9)  # one byte
    later = Field(site.field(150.0), "later")
    fetched = fetch_cached(later, start, end, settings=tiny, **kwargs)
    assert not fetched.from_cache
    (kept,) = list(tmp_path.glob("*.json"))
    assert kept != old and not old.with_suffix(".nc").exists()
    site.reset()
    assert fetch_cached(later, start, end, settings=tiny, **kwargs).from_cache
    assert not site.stac_server.searches()


def test_corrupt_cache_entry_is_refetched(flanders_site: PublishedSite, tmp_path: Path) -> None:
    site = flanders_site
    settings = Settings(stac_api_url=site.stac_url, retries=1, cache_dir=tmp_path)
    field = Field(site.field(), "cached")
    start, end = period_of(site)
    kwargs = {"settings": settings, "include_s1": False, "threads": 2}
    first = fetch_cached(field, start, end, **kwargs)
    assert not first.from_cache
    cache = CubeCache(tmp_path)
    key = cache_key(
        field, start, end, grid=grid_for_field(field), settings=settings, include_s1=False
    )
    cube_path, _ = cache.paths(key)
    data = cube_path.read_bytes()
    cube_path.write_bytes(data[: len(data) // 3])  # a torn file

    site.reset()
    second = fetch_cached(field, start, end, **kwargs)
    assert not second.from_cache
    assert len(site.stac_server.searches()) >= 1  # fetched again, not served broken
    xr.testing.assert_identical(second.cube, first.cube)
    site.reset()
    third = fetch_cached(field, start, end, **kwargs)
    assert third.from_cache and site.stac_server.requests == []


# --- errors a user sees: one line, exit status 2 -----------------------------------------------


@pytest.fixture()
def cli_in_process(flanders_site: PublishedSite, tmp_path: Path, monkeypatch):
    """Run ``python -m core fetch`` in this process against the flanders site."""
    monkeypatch.setenv("STAC_API_URL", flanders_site.stac_url)
    monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FIELDFLOW_RETRIES", "1")
    _, field_path = write_field(flanders_site, tmp_path)

    def run(*extra: str, start: str = "2017-08-01", end: str = "2017-09-30") -> int:
        return main(
            [
                "fetch",
                "--geojson",
                str(field_path),
                "--start",
                start,
                "--end",
                end,
                "--out",
                str(tmp_path / "out.nc"),
                *extra,
            ]
        )

    return run


def test_no_scenes_names_collection_and_dates(cli_in_process, capsys) -> None:
    assert cli_in_process(start="2030-01-01", end="2030-02-01") == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: No Sentinel-2 scenes cover the field between 2030-01-01 and "
        "2030-02-01. The period lies after today: there are no images of it yet."
    )


def test_a_field_in_the_sea_that_swapped_coordinates_would_put_on_land_is_told_so(
    flanders_site: PublishedSite, tmp_path: Path, capsys, monkeypatch
) -> None:
    """The site's field with longitude and latitude swapped (as a file with the axes the wrong
    way round gives it) lies in the Indian Ocean: the search finds nothing, and the message
    says where the field would be with them swapped."""
    from shapely import affinity
    from shapely.geometry import mapping

    monkeypatch.setenv("STAC_API_URL", flanders_site.stac_url)
    monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(tmp_path / "cache"))
    field = flanders_site.field(150.0)
    swapped = affinity.affine_transform(field, [0, 1, 1, 0, 0, 0])  # (x, y) -> (y, x)
    path = tmp_path / "swapped.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(swapped)}))
    start, end = period_of(flanders_site)
    args = ["fetch", "--geojson", str(path), "--start", start, "--end", end, "--out", "x.nc"]
    assert main(args) == 2
    err = capsys.readouterr().err
    lon, lat = field.centroid.x, field.centroid.y
    assert f"is in the sea; swapped, it would be {lat:.2f}° N, {lon:.2f}° E, on land" in err
    assert "check the order of its coordinates" in err
    assert len(flanders_site.stac_server.searches()) >= 1  # the search ran and found nothing


def test_cloud_limit_named_when_it_filters_everything(cli_in_process, capsys) -> None:
    assert cli_in_process("--max-cloud", "0", start="2017-08-01", end="2017-08-05") == 2
    err = capsys.readouterr().err
    assert "with at most 0% clouds" in err and "or a higher cloud limit;" in err
    # Before Sentinel-2 existed: no cloud limit would help, and the message says what would.
    assert cli_in_process(start="2014-05-01", end="2014-09-30") == 2
    err = capsys.readouterr().err
    assert "Sentinel-2 images begin on 2015-06-23: choose a later period." in err
    assert "cloud limit" not in err


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2017-09-30", "2017-08-01", "ends (2017-08-01) before it starts (2017-09-30)"),
        ("01/08/2017x", "2017-09-30", "write it as YYYY-MM-DD"),
    ],
)
def test_bad_dates(cli_in_process, capsys, start: str, end: str, message: str) -> None:
    assert cli_in_process(start=start, end=end) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_bad_field_file(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(tmp_path / "cache"))
    line = tmp_path / "line.geojson"
    line.write_text(json.dumps({"type": "LineString", "coordinates": [[3.0, 50.0], [3.1, 50.1]]}))
    code = main(
        [
            "fetch",
            "--geojson",
            str(line),
            "--start",
            "2020-01-01",
            "--end",
            "2020-02-01",
            "--out",
            str(tmp_path / "x.nc"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "polygon" in err.lower()
    assert not (tmp_path / "x.nc").exists()


def test_a_file_of_several_fields_is_refused_naming_the_options(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """Before any request (STAC_API_URL points nowhere): the messages name --index / --name."""
    monkeypatch.setenv("STAC_API_URL", "http://127.0.0.1:9/api/stac/v1")
    monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(tmp_path / "cache"))
    features = [
        Field(shapely.box(3.02 + 0.01 * i, 50.80, 3.025 + 0.01 * i, 50.805), n).to_geojson()
        for i, n in enumerate(["North", "South"])
    ]
    path = tmp_path / "two.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    args = ["fetch", "--geojson", str(path), "--start", "2020-01-01", "--end", "2020-02-01"]
    args += ["--out", str(tmp_path / "x.nc")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: The file 'two.geojson' holds 2 polygons; choose one with "
                          "--index N or --name NAME: 0 'North' (")  # fmt: skip
    assert main([*args, "--index", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --index 2 is out of range: the file 'two.geojson' holds 2 ")
    assert not (tmp_path / "x.nc").exists()


def test_network_down_after_retries(tmp_path: Path, capsys, monkeypatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/stac/v1"
    monkeypatch.setenv("STAC_API_URL", url)
    monkeypatch.setenv("FIELDFLOW_RETRIES", "1")
    monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(tmp_path / "cache"))
    field = Field(shapely.box(3.02, 50.80, 3.025, 50.805), "f")
    path = tmp_path / "f.geojson"
    path.write_text(json.dumps(field.to_geojson()))
    code = main(
        [
            "fetch",
            "--geojson",
            str(path),
            "--start",
            "2020-01-01",
            "--end",
            "2020-02-01",
            "--out",
            str(tmp_path / "x.nc"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Could not reach the STAC API at {url} after 2 tries")
    assert "Check your connection or STAC_API_URL" in err


@pytest.mark.parametrize("value", ["notaurl", "a-folder", "ftp://127.0.0.1/stac"])
def test_stac_api_url_that_is_no_http_url_is_one_error_line(
    value: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    """A word (read as a local file), a folder and an ftp URL: each refused at once by name,
    without retries (FIELDFLOW_RETRIES 4 with backoff would take seconds)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-folder").mkdir()
    monkeypatch.setenv("STAC_API_URL", value)
    monkeypatch.setenv("FIELDFLOW_RETRIES", "4")
    monkeypatch.setenv("FIELDFLOW_CACHE_DIR", str(tmp_path / "cache"))
    field = Field(shapely.box(3.02, 50.80, 3.025, 50.805), "f")
    path = tmp_path / "f.geojson"
    path.write_text(json.dumps(field.to_geojson()))
    out = tmp_path / "x.nc"
    args = ["--geojson", str(path), "--start", "2023-05-01", "--end", "2023-05-10"]
    started = time.monotonic()
    code = main(["fetch", *args, "--out", str(out)])
    assert time.monotonic() - started < 5.0
    assert code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"error: STAC_API_URL is {value!r}: it must be the http(s) URL of a STAC API, e.g. "
        "https://planetarycomputer.microsoft.com/api/stac/v1. Correct it, or unset it to use "
        "Planetary Computer, and start again."
    ]
    assert not out.exists()


# --- heavier -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_flanders_period_in_process(published_site) -> None:
    """All 118 S2 and 159 S1 acquisitions of be-flanders-a, with splits and reprocessing."""
    site = published_site("be-flanders-a", split=(5, 40, 90), reprocessed=(0, 10, 60), pad_px=8)
    start, end = period_of(site)
    started = time.monotonic()
    result = fetch_cube(
        Field(site.field(), "full"),
        start,
        end,
        settings=Settings(stac_api_url=site.stac_url, retries=1),
        threads=8,
    )
    print(f"full flanders: {time.monotonic() - started:.1f} s")
    assert_reproduces(result.cube, site.cube, start, end)


# --- the model knows a fetched field it was trained on ----------------------------------------


@pytest.mark.parametrize(
    ("name", "trained_on", "nearest"),
    [("es-field", True, "es-field"), ("be-flanders-c", False, "be-flanders-a")],
)
def test_a_field_fetched_where_the_model_was_trained_is_known_as_such(
    published_site, name: str, trained_on: bool, nearest: str
) -> None:
    """The shipped model was trained on es-field's cube, not on be-flanders-c's (held out, some
    45 km from be-flanders-a). A field fetched there under the user's own name is recognised by
    where it lies, not by the name, and the page's verdict warns where its scores flatter."""
    from core.reconstruct import ReconstructOptions, reconstruct
    from core.season import trained_on_note

    site = published_site(name, max_dates=12)
    settings = Settings(stac_api_url=site.stac_url, retries=1)
    field = Field(site.field(20.0), "my own field")
    cube = fetch_cube(field, *period_of(site), settings=settings, threads=2).cube
    assert cube.attrs["site"] == "my own field"
    query = cube["time_s2"].values[[3]]
    attrs = reconstruct(cube, query, "model", ReconstructOptions(samples=1, device="cpu")).attrs
    assert attrs["model_trained_on_site"] == int(trained_on)
    assert attrs["model_nearest_training_site"] == nearest
    if trained_on:
        assert attrs["model_training_site"] == name and attrs["model_trained_share"] > 0.99
        assert attrs["model_nearest_training_km"] == 0
        assert trained_on_note(attrs).startswith(
            f" The model was trained on this place's own data ({name})"
        )
    else:
        assert attrs["model_training_site"] == "" and attrs["model_trained_share"] == 0
        assert 40 < attrs["model_nearest_training_km"] < 50
        assert trained_on_note(attrs) == ""


def test_a_short_periods_ends_are_reconstructed_from_data_on_both_sides(
    published_site, tmp_path: Path
) -> None:
    """A fetch takes PERIOD_MARGIN_DAYS either side of the period: a two-week curve then
    agrees with the season's on the same days, where without it the days after the period's
    last clear acquisition were held flat (review 6: 0.36 against 0.58 on the last day)."""
    site = published_site("be-flanders-a", start="2018-05-01", end="2018-07-31")
    field = Field(site.field(150.0), "short")
    settings = Settings(stac_api_url=site.stac_url, retries=1)
    mask = field_mask(field, grid_for_field(field))

    def curve(start: str, end: str, margin_days: int) -> pd.DataFrame:
        fetched = fetch_cube(
            field, start, end, settings=settings, include_s1=False, margin_days=margin_days
        )
        assert fetched.cube.attrs["start_date"] == start and fetched.cube.attrs["end_date"] == end
        assert fetched.cube.attrs["margin_days"] == margin_days
        days = calendar_day(fetched.cube["time_s2"].values)
        inside = (days >= np.datetime64(start)) & (days <= np.datetime64(end))
        assert (~inside).any() == (margin_days > 0)  # frames outside only with a margin
        return ndvi_curve(fetched.cube, "2018-06-01", "2018-06-15", field_mask=mask)

    season = curve("2018-05-01", "2018-07-31", 0)  # the site's whole window
    with_margin = curve("2018-06-01", "2018-06-15", PERIOD_MARGIN_DAYS)
    assert len(with_margin) == 15  # the period's days, never the margin's
    np.testing.assert_allclose(with_margin["ndvi"], season["ndvi"], atol=1e-6)
    # Without the margin the first acquisition is 06-03: 06-01 and 06-02 had no value at all,
    # and the days after the last clear one were held flat.
    without = curve("2018-06-01", "2018-06-15", 0)
    assert str(without["date"].iloc[0])[:10] == "2018-06-03"
    differs = np.abs(without["ndvi"].to_numpy() - season["ndvi"].to_numpy()[2:])
    assert differs.max() > 0.02


def test_a_period_all_acquisitions_lie_on_one_side_of_is_refused_before_any_read(
    published_site,
) -> None:
    # Review 22: a period after the imagery's last acquisition (found only in the margin) was
    # fetched, then the app said "The period ends (2018-08-27) before it starts (2018-08-29);
    # swap the dates" and batch "... or fetch a cube for that period".
    site = published_site("be-flanders-a", start="2018-05-01", end="2018-07-31")
    field = Field(site.field(150.0), "short")
    settings = Settings(stac_api_url=site.stac_url, retries=1)
    days = np.unique(site.s2_times().astype("datetime64[D]"))
    one_day = np.timedelta64(1, "D")
    after = (str(days[-1] + 2 * one_day), str(days[-1] + 20 * one_day))
    before = (str(days[0] - 20 * one_day), str(days[0] - 2 * one_day))
    for (first, last), said in (
        (after, f"the latest is from {days[-1]}, before the period {after[0]} to {after[1]}"),
        (before, f"the earliest is from {days[0]}, after the period {before[0]} to {before[1]}"),
    ):
        site.reset()
        with pytest.raises(NoScenesError) as caught:
            fetch_cube(field, first, last, settings=settings, include_s1=False)
        assert str(caught.value).startswith("No Sentinel-2 acquisition of the field (searched")
        assert said in str(caught.value), str(caught.value)
        assert site.cog_server.requests == []  # refused before a single range read
    # A few days between two passes, none inside: acquisitions on both sides, reconstructed.
    gaps = np.diff(days).astype(int)
    wide = int(np.argmax(gaps))
    assert gaps[wide] >= 4
    start, end = str(days[wide] + one_day), str(days[wide + 1] - one_day)
    fetched = fetch_cube(field, start, end, settings=settings, include_s1=False)
    mask = field_mask(field, grid_for_field(field))
    curve = ndvi_curve(fetched.cube, start, end, field_mask=mask)
    assert len(curve) == gaps[wide] - 1 and curve["ndvi"].notna().all()


# --- review 11: tiles of two zones, unused assets, tokens that expire -------------------------


def test_a_field_near_a_zone_edge_reads_its_own_zones_tile_not_the_neighbours(
    published_site,
) -> None:
    """Each acquisition is served twice, as PC serves a datatake near a UTM zone's edge: the
    tile of the field's zone and the tile of the zone west of it (same time, the same ground,
    resampled onto its own zone's grid). By time and id the lower zone's tile won, and the field
    got its pixels resampled a second time (review 11: 28 % of the values changed)."""
    from core.fetch import load_s2
    from core.stac import S2_COLLECTION
    from tests.support.zones import tile_in_zone

    site = published_site("be-flanders-a", fresh=True, max_dates=3)
    assert site.crs == "EPSG:32631"
    west = [tile_in_zone(site, item, 32630) for item in site.s2_items]
    site.stac_server.add_items({S2_COLLECTION: west})
    settings = Settings(stac_api_url=site.stac_url, retries=0)
    field = Field(site.field(), "zone edge")
    result = fetch_cube(field, *period_of(site), settings=settings, threads=2, include_s1=False)
    assert result.scenes_found[S2_COLLECTION] == 6
    assert_reproduces(result.cube, site.cube.drop_vars(["s1", "time_s1"]), *period_of(site))
    # The west tiles alone differ on this grid: the test would see which tile won.
    client_items = [pystac.Item.from_dict(item) for item in west]
    _, alone, _ = load_s2(client_items, result.grid, settings=settings, threads=2)
    assert np.nanmax(np.abs(alone - result.cube["s2"].values)) > 0.05


def test_a_scene_whose_unread_asset_is_misplaced_is_still_read(published_site) -> None:
    """odc-stac placed an item by all its assets' grids: one whose ``visual`` (never read) was
    described 400 km away missed the field, and its date was dropped without a word."""
    import copy

    from core.stac import S2_COLLECTION

    site = published_site("be-flanders-a", fresh=True, max_dates=3)
    items = copy.deepcopy(site.s2_items)
    moved = 0
    for asset in items[1]["assets"].values():
        if "not-published" in asset["href"] and "proj:transform" in asset:
            asset["proj:transform"][2] += 400_000.0
            asset["proj:bbox"][0] += 400_000.0
            asset["proj:bbox"][2] += 400_000.0
            moved += 1
    assert moved >= 2  # visual, AOT, WVP, ... in PC's items
    site.stac_server.clear_items()
    site.stac_server.add_items({S2_COLLECTION: items, "sentinel-1-rtc": site.s1_items})
    settings = Settings(stac_api_url=site.stac_url, retries=0)
    field = Field(site.field(), "misplaced asset")
    result = fetch_cube(field, *period_of(site), settings=settings, threads=2, include_s1=False)
    assert result.frames_loaded["s2"] == 3
    assert_reproduces(result.cube, site.cube.drop_vars(["s1", "time_s1"]), *period_of(site))


def test_a_read_that_keeps_failing_names_the_scene_and_the_cause(published_site) -> None:
    """The message was "Read failed. See previous exception for details.. Check your
    connection.": it named neither the scene nor what went wrong (review 11)."""
    site = published_site("be-flanders-a", fresh=True, max_dates=2)
    site.cog_server.faults.drop_next(1000, prefix="/sentinel2-l2/")
    settings = Settings(stac_api_url=site.stac_url, retries=1)
    field = Field(site.field(), "dropped")
    with pytest.raises(NetworkError) as caught:
        fetch_cube(field, *period_of(site), settings=settings, threads=1, include_s1=False)
    message = str(caught.value)
    assert "See previous exception" not in message and ".." not in message
    assert "Empty reply from server" in message
    assert any(f"(scene {item['id']})" in message for item in site.s2_items)


@pytest.fixture()
def sas_site(published_site, monkeypatch):
    """A site whose COGs are served behind Planetary Computer SAS tokens
    (:mod:`tests.support.sas_server`), signed by the real ``planetary_computer`` code: its
    blob domain and token endpoint pointed at the local server, its token cache emptied."""
    import planetary_computer
    from planetary_computer import sas

    from tests.support.sas_server import SasCogServer

    site = published_site("be-flanders-a", fresh=True, max_dates=2)
    with SasCogServer(str(site.folder)) as blobs:
        monkeypatch.setattr(sas, "BLOB_STORAGE_DOMAIN", blobs.origin.split("//", 1)[1])
        monkeypatch.setattr(sas, "TOKEN_CACHE", {})
        monkeypatch.setenv("PC_SDK_SAS_URL", f"{blobs.origin}/api/sas/v1/token")
        planetary_computer.settings.Settings.get.cache_clear()
        moved = json.loads(json.dumps(site.items).replace(site.cog_server.url, blobs.origin))
        site.stac_server.clear_items()
        site.stac_server.add_items(moved)
        try:
            yield site, blobs
        finally:
            monkeypatch.undo()
            planetary_computer.settings.Settings.get.cache_clear()


def test_a_token_that_expires_during_a_fetch_is_renewed(sas_site) -> None:
    """The hrefs were signed at search time and read with that token however old: one that
    expired meanwhile failed the fetch as "access refused ... set PC_SDK_SUBSCRIPTION_KEY"
    (review 11). Here every token given so far expires once loading starts."""
    site, blobs = sas_site
    expired: list[str] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage.startswith("loading") and not expired:
            blobs.control("expire", {})
            expired.append(stage)

    settings = Settings(stac_api_url=site.stac_url, retries=0)
    field = Field(site.field(), "token expires")
    result = fetch_cube(
        field, *period_of(site), settings=settings, threads=1, include_s1=False,
        progress=progress,
    )  # fmt: skip
    assert expired
    assert any(e.status == 403 for e in blobs.requests)  # the old token was refused
    assert blobs.control("issued")["issued"] >= 2  # and a new one asked for
    assert_reproduces(result.cube, site.cube.drop_vars(["s1", "time_s1"]), *period_of(site))


def test_a_cached_token_about_to_expire_is_not_used_for_a_load(sas_site) -> None:
    """A long-lived process (the app, a Dask worker) keeps PC's tokens; planetary_computer
    renews one only under a minute before it expires, and a load reads for minutes."""
    from planetary_computer import sas

    site, blobs = sas_site
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    stamp = soon.strftime("%Y-%m-%dT%H:%M:%SZ")
    key = f"{blobs.origin}/api/sas/v1/token/127/sentinel2-l2"
    sas.TOKEN_CACHE[key] = sas.SASToken(  # unknown to the server: as if it had expired
        **{"msft:expiry": stamp, "token": f"st={stamp}&se={stamp}&sp=rl&sr=c&sig=stale"}
    )
    settings = Settings(stac_api_url=site.stac_url, retries=0)
    field = Field(site.field(), "token about to expire")
    result = fetch_cube(field, *period_of(site), settings=settings, threads=1, include_s1=False)
    assert not [e for e in blobs.requests if e.status == 403]
    assert "sig=stale" not in " ".join(e.request.query for e in blobs.requests)
    assert_reproduces(result.cube, site.cube.drop_vars(["s1", "time_s1"]), *period_of(site))


def test_scenes_lacking_a_layer_are_read_as_they_are_and_named(published_site, tmp_path) -> None:
    """A catalogue item without SCL was read as all cloudy, and one without near infrared as
    "clear" pixels without an NDVI, with no word (review 11). They are named now, also when
    the cube comes back from the cache."""
    import copy

    from core.stac import S2_COLLECTION

    site = published_site("be-flanders-a", fresh=True, max_dates=3)
    items = copy.deepcopy(site.s2_items)
    del items[0]["assets"]["SCL"]
    for band in ("B08", "B8A"):
        items[2]["assets"].pop(band, None)
    site.stac_server.clear_items()
    site.stac_server.add_items({S2_COLLECTION: items, "sentinel-1-rtc": site.s1_items})
    settings = Settings(stac_api_url=site.stac_url, retries=0, cache_dir=tmp_path)
    field = Field(site.field(), "incomplete")
    for _ in range(2):  # fetched, then from the cache
        result = fetch_cached(field, *period_of(site), settings=settings, include_s1=False)
        assert result.incomplete_scenes == (
            f"{items[0]['id']} (no SCL)",
            f"{items[2]['id']} (no near infrared)",
        )
        assert "2 scene(s) lack a layer in the catalogue" in result.skipped_note
        assert result.frames_loaded["s2"] == 3
        assert not result.cube["valid"].values[0].any()  # no scene classes: not clear
        assert np.isnan(result.cube["s2"].sel(band="B08").values[2]).all()
    assert result.from_cache


@pytest.mark.parametrize(
    ("keep_first", "older", "newer"),
    [
        # As first processed (02.12, no offset) and as reprocessed (05.00, +1000 DN).
        (True, None, ("05.00", dt.datetime(2023, 5, 1, 12, tzinfo=dt.UTC))),
        # Two reprocessings that both carry the offset, the older listed after the newer.
        (
            False,
            ("04.00", dt.datetime(2022, 3, 1, 8, tzinfo=dt.UTC)),
            ("05.00", dt.datetime(2023, 5, 1, 12, tzinfo=dt.UTC)),
        ),
        # One baseline, generated twice: the later generation wins.
        (
            False,
            ("05.00", dt.datetime(2023, 5, 1, 12, tzinfo=dt.UTC)),
            ("05.00", dt.datetime(2024, 2, 9, 7, tzinfo=dt.UTC)),
        ),
    ],
    ids=["first-and-reprocessed", "two-reprocessings", "generated-twice"],
)
def test_a_reprocessed_acquisition_is_read_from_its_newest_processing(
    published_site, keep_first, older, newer
) -> None:
    """PC holds some acquisitions twice, as first processed and as ESA reprocessed them
    (same time and tile). The older product's pixels won, by the key of its baseline or by its
    id (review 11). The newest processing now wins; the older fills only the strip the newer
    lacks. The newer's 10 m bands carry a +0.003 tracer that tells the products apart."""
    from core.stac import S2_COLLECTION
    from tests.support.reprocessing import reprocessed

    site = published_site("be-flanders-a", fresh=True, max_dates=3)
    blank_m = 200
    newest = [
        reprocessed(site, item, baseline=newer[0], generated=newer[1], blank_m=blank_m)
        for item in site.s2_items
    ]
    items = list(newest)
    if older is not None:
        items += [
            reprocessed(site, item, baseline=older[0], generated=older[1], tracer_dn=0)
            for item in site.s2_items
        ]
    if keep_first:
        items = [*site.s2_items, *items]
    site.stac_server.clear_items()
    site.stac_server.add_items({S2_COLLECTION: items})
    settings = Settings(stac_api_url=site.stac_url, retries=0)
    field = Field(site.field(), "reprocessed")
    result = fetch_cube(field, *period_of(site), settings=settings, threads=2, include_s1=False)
    assert result.scenes_found[S2_COLLECTION] == 6 and result.frames_loaded["s2"] == 3

    fetched = result.cube
    row, col = grid_from_cube(fetched).offset_in(grid_from_cube(site.cube))
    window = {
        "y": slice(row, row + fetched.sizes["y"]),
        "x": slice(col, col + fetched.sizes["x"]),
    }
    source = site.cube.isel(**window)
    np.testing.assert_array_equal(fetched["time_s2"].values, source["time_s2"].values)
    strip = fetched["y"].values > site.grid().top - blank_m  # the newest lacks these rows
    assert 0 < strip.sum() < strip.size
    difference = fetched["s2"].values - source["s2"].values  # (T, band, y, x)
    for b, band in enumerate(fetched["band"].values):
        tracer = 0.003 if band in ("B02", "B03", "B04", "B08") else 0.0
        found = difference[:, b][np.isfinite(difference[:, b])]
        assert found.size
        np.testing.assert_allclose(difference[:, b][:, ~strip], tracer, atol=1e-4, equal_nan=True)
        np.testing.assert_allclose(difference[:, b][:, strip], 0.0, atol=1e-4, equal_nan=True)
    np.testing.assert_array_equal(fetched["valid"].values, source["valid"].values)
