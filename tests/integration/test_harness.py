"""The offline harness speaks PC's protocols for real: STAC API paging, COG Range reads, faults.

Clients here are the real libraries (pystac-client, requests, rasterio/GDAL, odc-stac) talking
over TCP to the local servers, which serve real cubes published as PC-like items and COGs.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime

import numpy as np
import pystac
import pytest
import rasterio
import requests
from pystac_client import Client
from pystac_client.stac_api_io import StacApiIO
from rasterio.errors import RasterioIOError
from rasterio.windows import Window, from_bounds
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from core.cube import S2_BANDS, read_cube
from tests.integration.conftest import PublishSite
from tests.support.cog_server import parse_range
from tests.support.publish import (
    OFFSET_BASELINE,
    REPROCESSED_BASELINE,
    PublishError,
    PublishOptions,
    baseline_for,
    dn_to_reflectance,
    publish_cube,
)
from tests.support.site import PublishedSite, find_cube
from tests.support.stac_server import parse_interval

S2, S1 = "sentinel-2-l2a", "sentinel-1-rtc"


def _retrying_stac_io(total: int = 3) -> StacApiIO:
    retry = Retry(
        total=total,
        backoff_factor=0,
        status_forcelist=[429, 500, 502, 503, 504],
        allowed_methods=None,
        respect_retry_after_header=True,
    )
    return StacApiIO(max_retries=retry, timeout=10)


def _cube_bounds(site: PublishedSite) -> tuple[float, float, float, float]:
    x, y = site.cube["x"].values, site.cube["y"].values
    return x[0] - 5, y[-1] - 5, x[-1] + 5, y[0] + 5


def _read_on_cube_grid(site: PublishedSite, href: str) -> tuple[np.ndarray, float]:
    """An asset read over HTTP onto the cube's 10 m grid (nearest), and its nodata."""
    h, w = site.cube.sizes["y"], site.cube.sizes["x"]
    with rasterio.Env(**site.gdal_env()), rasterio.open(href) as ds:
        window = from_bounds(*_cube_bounds(site), ds.transform)
        data = ds.read(1, window=window, out_shape=(h, w), boundless=True, fill_value=ds.nodata)
        return data, ds.nodata


def _time_index(site: PublishedSite, item: dict, key: str = "time_s2") -> int:
    when = np.datetime64(item["properties"]["datetime"].rstrip("Z"), "ns")
    return int(np.flatnonzero(site.cube[key].values == when)[0])


# --- STAC API -----------------------------------------------------------------------------


def test_landing_page_collections_and_conformance(flanders_site: PublishedSite) -> None:
    client = Client.open(flanders_site.stac_url)
    assert client.conforms_to("ITEM_SEARCH")
    assert client.conforms_to("QUERY")
    assert {c.id for c in client.get_collections()} == {S2, S1}
    s2 = client.get_collection(S2)
    assert "B04" in s2.extra_fields["item_assets"]
    assert all(flanders_site.stac_url in link.href for link in client.links if link.rel != "docs")
    raw = requests.get(flanders_site.stac_url + "/", timeout=10).json()
    assert {(lk["rel"], lk.get("method")) for lk in raw["links"]} >= {
        ("search", "GET"),
        ("search", "POST"),
        ("conformance", None),
        ("data", None),
    }


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_search_pages_through_every_item(flanders_site: PublishedSite, method: str) -> None:
    site = flanders_site
    client = Client.open(site.stac_url)
    search = client.search(collections=[S2], intersects=site.field(), limit=5, method=method)
    found = list(search.items_as_dicts())
    ids = [it["id"] for it in found]
    assert sorted(ids) == sorted(it["id"] for it in site.s2_items)
    assert len(ids) == len(set(ids)) == 13  # 12 dates, one split into two tiles
    times = [it["properties"]["datetime"] for it in found]
    assert times == sorted(times, reverse=True)  # newest first, like pgstac
    pages = site.stac_server.searches()
    assert [e.method for e in pages] == [method] * math.ceil(13 / 5)
    if method == "POST":
        assert all("token" in json.loads(e.request.body) for e in pages[1:])
        assert "intersects" in json.loads(pages[-1].request.body)
    else:
        assert all("token=next%3A" in e.request.query for e in pages[1:])
        assert "intersects=" in pages[-1].request.query


def test_next_link_shape_matches_planetary_computer(flanders_site: PublishedSite) -> None:
    url = flanders_site.stac_url + "/search"
    body = {"collections": [S2], "limit": 4}
    page = requests.post(url, json=body, timeout=10).json()
    assert page["numberMatched"] == 13 and page["numberReturned"] == 4
    assert page["context"] == {"returned": 4, "limit": 4, "matched": 13}
    (nxt,) = [lk for lk in page["links"] if lk["rel"] == "next"]
    assert nxt["method"] == "POST" and nxt["href"] == url
    assert nxt["body"]["collections"] == [S2] and nxt["body"]["token"].startswith("next:")
    last = page
    while any(lk["rel"] == "next" for lk in last["links"]):
        nxt = next(lk for lk in last["links"] if lk["rel"] == "next")
        last = requests.post(nxt["href"], json=nxt["body"], timeout=10).json()
    assert last["numberReturned"] == 1  # 13 = 4 + 4 + 4 + 1
    got = requests.get(url, params={"collections": S2, "limit": 4}, timeout=10).json()
    (nxt,) = [lk for lk in got["links"] if lk["rel"] == "next"]
    assert nxt["method"] == "GET" and "token=next" in nxt["href"]


def test_search_filters(flanders_site: PublishedSite) -> None:
    site = flanders_site
    client = Client.open(site.stac_url)

    def ids(**kw: object) -> set[str]:
        return {it.id for it in client.search(limit=50, **kw).items()}

    s2 = site.s2_items
    times = sorted({it["properties"]["datetime"] for it in s2})
    lo, hi = times[2], times[6]
    expected = {it["id"] for it in s2 if lo <= it["properties"]["datetime"] <= hi}
    assert ids(collections=[S2], datetime=f"{lo}/{hi}") == expected
    assert ids(collections=[S2], datetime=f"../{lo}") == {
        it["id"] for it in s2 if it["properties"]["datetime"] <= lo
    }
    cloudy = {it["id"] for it in s2 if it["properties"]["eo:cloud_cover"] < 50}
    assert 0 < len(cloudy) < len(s2)
    assert ids(collections=[S2], query={"eo:cloud_cover": {"lt": 50}}) == cloudy
    assert (
        ids(
            collections=[S2],
            filter={"op": "<", "args": [{"property": "eo:cloud_cover"}, 50]},
            filter_lang="cql2-json",
        )
        == cloudy
    )
    assert ids(collections=[S1], query={"sat:orbit_state": {"eq": "ascending"}}) == {
        it["id"] for it in site.s1_items
    }
    assert ids(collections=[S1], query={"sat:orbit_state": {"eq": "descending"}}) == set()
    for method in ("GET", "POST"):
        search = client.search(collections=[S1], sortby="+properties.datetime", method=method)
        times_s1 = [it["properties"]["datetime"] for it in search.items_as_dicts()]
        assert times_s1 == sorted(it["properties"]["datetime"] for it in site.s1_items)
    west, south, east, north = site.field().bounds
    assert len(ids(collections=[S2, S1], bbox=[west, south, east, north])) == 13 + 12
    assert ids(collections=[S2], bbox=[east + 1, south, east + 2, north]) == set()
    # the two tiles of the split date: the east one does not reach the field's west edge
    split = [it for it in s2 if it["properties"]["datetime"] == times[3]]
    assert len(split) == 2
    west_strip = [west, south, west + 1e-4, north]
    assert len(ids(collections=[S2], bbox=west_strip, datetime=times[3])) == 1


def test_collection_items_endpoint_pages(flanders_site: PublishedSite) -> None:
    site = flanders_site
    s1 = Client.open(site.stac_url).get_collection(S1)
    assert sorted(it.id for it in s1.get_items()) == sorted(it["id"] for it in site.s1_items)
    url = f"{site.stac_url}/collections/{S1}/items"
    page = requests.get(url, params={"limit": 5}, timeout=10).json()
    assert page["numberReturned"] == 5 and page["numberMatched"] == 12
    (nxt,) = [lk for lk in page["links"] if lk["rel"] == "next"]
    assert nxt["href"].startswith(url + "?") and "token=next" in nxt["href"]
    one = site.s1_items[0]["id"]
    assert requests.get(f"{url}/{one}", timeout=10).json()["id"] == one
    assert requests.get(f"{url}/nope", timeout=10).status_code == 404


def test_search_errors_are_400(flanders_site: PublishedSite) -> None:
    url = flanders_site.stac_url + "/search"
    for body in (
        {"bbox": [1, 2, 3]},
        {"limit": 0},
        {"datetime": "yesterday"},
        {"query": {"eo:cloud_cover": {"near": 3}}},
        {"token": "next:nope:nope"},
    ):
        resp = requests.post(url, json=body, timeout=10)
        assert resp.status_code == 400, body
        assert resp.json()["code"] == "BadRequest"
    assert (
        requests.get(flanders_site.stac_url + "/collections/landsat", timeout=10).status_code == 404
    )


def test_items_are_pc_items_with_local_urls(flanders_site: PublishedSite) -> None:
    site = flanders_site
    text = json.dumps(site.items)
    assert "planetarycomputer.microsoft.com" not in text
    assert "blob.core.windows.net" not in text
    item = pystac.Item.from_dict(site.s2_items[0])
    assert item.collection_id == S2
    assert set(item.assets) >= {*S2_BANDS, "SCL", "visual", "AOT", "granule-metadata"}
    assert site.s2_items[0]["properties"]["proj:epsg"] == 32631  # as PC serves it
    assert item.properties["proj:code"] == "EPSG:32631"  # pystac migrates projection v1.1 -> v2
    assert item.properties["s2:mgrs_tile"] == "31UES"
    self_href = item.get_single_link("self").href
    served = requests.get(self_href, timeout=10).json()
    assert served["id"] == item.id
    s1 = site.s1_items[0]
    assert s1["properties"]["sat:orbit_state"] == "ascending"
    assert s1["properties"]["start_datetime"] < s1["properties"]["datetime"].replace("T", " ")
    assert s1["assets"]["vv"]["raster:bands"][0]["nodata"] == -32768
    assert s1["assets"]["vv"]["file:size"] == len(
        requests.get(s1["assets"]["vv"]["href"], timeout=10).content
    )


# --- baselines and pixels -----------------------------------------------------------------


def test_baseline_rule() -> None:
    assert baseline_for(datetime(2018, 5, 1, tzinfo=UTC)) < OFFSET_BASELINE
    assert baseline_for(datetime(2022, 1, 24, tzinfo=UTC)) < OFFSET_BASELINE
    assert baseline_for(datetime(2022, 1, 25, tzinfo=UTC)) == "04.00"
    assert baseline_for(datetime(2024, 1, 1, tzinfo=UTC)) == "05.10"
    assert REPROCESSED_BASELINE >= OFFSET_BASELINE


def test_s2_cog_window_over_http_decodes_to_the_cube(flanders_site: PublishedSite) -> None:
    site = flanders_site
    reprocessed = [
        it
        for it in site.s2_items
        if it["properties"]["s2:processing_baseline"] == REPROCESSED_BASELINE
    ]
    assert len(reprocessed) == 1 and reprocessed[0]["properties"]["datetime"] < "2022"
    plain = [it for it in site.s2_items if it["properties"]["s2:processing_baseline"] == "02.12"]
    for item in (reprocessed[0], plain[0]):
        t = _time_index(site, item)
        baseline = item["properties"]["s2:processing_baseline"]
        for band in ("B04", "B11"):  # 10 m and 20 m
            asset = item["assets"][band]
            assert asset["gsd"] == (10.0 if band == "B04" else 20.0)
            dn, nodata = _read_on_cube_grid(site, asset["href"])
            assert nodata == 0
            want = site.cube["s2"].sel(band=band).values[t]
            got = dn_to_reflectance(dn, baseline)
            np.testing.assert_allclose(got, want, atol=1e-4)
            if baseline == REPROCESSED_BASELINE:  # the offset is in the DN
                np.testing.assert_array_equal(dn, np.rint(want * 10000) + 1000)
        scl, _ = _read_on_cube_grid(site, item["assets"]["SCL"]["href"])
        np.testing.assert_array_equal(scl, site.cube["scl"].values[t])


def test_split_acquisition_tiles_union_to_the_cube(flanders_site: PublishedSite) -> None:
    site = flanders_site
    by_time: dict[str, list[dict]] = {}
    for it in site.s2_items:
        by_time.setdefault(it["properties"]["datetime"], []).append(it)
    (pair,) = [v for v in by_time.values() if len(v) == 2]
    assert pair[0]["properties"]["s2:mgrs_tile"] != pair[1]["properties"]["s2:mgrs_tile"]
    t = _time_index(site, pair[0])
    merged = np.zeros((site.cube.sizes["y"], site.cube.sizes["x"]), np.uint16)
    cover = []
    for item in pair:
        dn, _ = _read_on_cube_grid(site, item["assets"]["B08"]["href"])
        cover.append(dn > 0)
        merged = np.where(dn > 0, dn, merged)
    assert (cover[0] & cover[1]).any() and not cover[0].all() and not cover[1].all()
    np.testing.assert_allclose(
        dn_to_reflectance(merged, "02.12"), site.cube["s2"].sel(band="B08").values[t], atol=1e-4
    )


def test_s1_is_linear_gamma0_float32(flanders_site: PublishedSite) -> None:
    site = flanders_site
    item = site.s1_items[5]
    t = _time_index(site, item, "time_s1")
    for p, key in enumerate(("vv", "vh")):
        linear, nodata = _read_on_cube_grid(site, item["assets"][key]["href"])
        assert linear.dtype == np.float32 and nodata == -32768
        np.testing.assert_allclose(10 * np.log10(linear), site.cube["s1"].values[t, p], atol=1e-3)


def test_odc_stac_loads_the_cube_back(flanders_site: PublishedSite) -> None:
    """odc-stac (the client's loader) over HTTP, same-day tiles merged by solar day."""
    odc_stac = pytest.importorskip("odc.stac")
    from odc.geo.geobox import GeoBox

    site = flanders_site
    items = [pystac.Item.from_dict(it) for it in site.s2_items]
    geobox = GeoBox.from_bbox(_cube_bounds(site), site.crs, resolution=10)
    with rasterio.Env(**site.gdal_env()):
        ds = odc_stac.load(
            items,
            bands=["B03", "B12", "SCL"],
            geobox=geobox,
            groupby="solar_day",
            dtype="uint16",
            nodata=0,
        )
    assert ds.sizes["time"] == site.cube.sizes["time_s2"]
    sub = site.cube
    np.testing.assert_allclose(ds.x.values, sub.x.values)
    np.testing.assert_allclose(ds.y.values, sub.y.values)
    baselines = {
        it["properties"]["datetime"][:10]: it["properties"]["s2:processing_baseline"]
        for it in site.s2_items
    }
    for t in range(ds.sizes["time"]):
        day = str(ds.time.values[t])[:10]
        for band in ("B03", "B12"):
            got = dn_to_reflectance(ds[band].values[t], baselines[day])
            np.testing.assert_allclose(got, sub["s2"].sel(band=band).values[t], atol=1e-4)
        np.testing.assert_array_equal(ds["SCL"].values[t], sub["scl"].values[t])


def test_range_reads_fetch_windows_not_files(published_site: PublishSite) -> None:
    site = published_site("it-bolzano", max_dates=2)  # 322 x 320 px: several 256 px tiles
    href = site.s2_items[0]["assets"]["B04"]["href"]
    size = int(requests.head(href, timeout=10).headers["Content-Length"])
    site.reset()
    with rasterio.Env(**site.gdal_env()), rasterio.open(href) as ds:
        window = ds.read(1, window=Window(290, 290, 16, 16))
    t = _time_index(site, site.s2_items[0])
    want = site.cube["s2"].sel(band="B04").values[t, 290:306, 289:305]  # COG column 0 is padding
    np.testing.assert_allclose(dn_to_reflectance(window, "04.00"), want, atol=1e-4)
    gets = [e for e in site.cog_server.exchanges_for(href) if e.method == "GET"]
    assert gets and all(e.status == 206 and e.request.header("Range") for e in gets)
    assert site.cog_server.bytes_sent(href) < size / 2, (site.cog_server.bytes_sent(href), size)


# --- the COG server's HTTP ----------------------------------------------------------------


def test_range_header_semantics(flanders_site: PublishedSite) -> None:
    href = flanders_site.s1_items[0]["assets"]["vv"]["href"]
    full = requests.get(href, timeout=10)
    assert full.status_code == 200 and full.headers["Accept-Ranges"] == "bytes"
    data, size = full.content, len(full.content)
    for header, first, last in (
        ("bytes=10-99", 10, 99),
        ("bytes=100-", 100, size - 1),
        ("bytes=-50", size - 50, size - 1),
        ("bytes=0-99999999", 0, size - 1),
    ):
        r = requests.get(href, headers={"Range": header}, timeout=10)
        assert r.status_code == 206, header
        assert r.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert int(r.headers["Content-Length"]) == last - first + 1
        assert r.content == data[first : last + 1]
    r = requests.get(href, headers={"Range": f"bytes={size}-"}, timeout=10)
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{size}"
    r = requests.get(href, headers={"Range": "bytes=0-1,5-9"}, timeout=10)  # several: whole file
    assert r.status_code == 200 and r.content == data
    head = requests.head(href, timeout=10)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == size
    assert requests.get(href.rsplit("/", 1)[0] + "/", timeout=10).status_code == 404  # no listing


def test_parse_range() -> None:
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=-500", 100) == (0, 99)
    assert parse_range("bytes=9-0", 100) is None
    assert parse_range("bytes=1-2,4-5", 100) is None
    assert parse_range("items=1-2", 100) is None
    with pytest.raises(ValueError, match="beyond"):
        parse_range("bytes=100-", 100)
    with pytest.raises(ValueError, match="suffix"):
        parse_range("bytes=-0", 100)


# --- failure injection --------------------------------------------------------------------


def test_stac_503_then_success_with_retries(flanders_site: PublishedSite) -> None:
    site = flanders_site
    site.stac_server.faults.fail_next(2, 503, prefix=site.stac_server.search_path)
    client = Client.open(site.stac_url, stac_io=_retrying_stac_io())
    found = list(client.search(collections=[S2], limit=20).items())
    assert len(found) == 13
    assert [e.status for e in site.stac_server.searches()] == [503, 503, 200]


def wait_for_searches(site: PublishedSite, count: int, timeout_s: float = 10.0) -> None:
    """Wait until the STAC server has logged ``count`` searches: it logs an answer after
    writing it, so the client may see the answer before the log does (more so under load)."""
    deadline = time.monotonic() + timeout_s
    while len(site.stac_server.searches()) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_stac_429_retry_after_and_dropped_connection(flanders_site: PublishedSite) -> None:
    site = flanders_site
    session = requests.Session()
    retry = Retry(total=3, backoff_factor=0, status_forcelist=[429], allowed_methods=None)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    site.stac_server.faults.fail_next(1, 429, retry_after_s=1)
    site.stac_server.faults.drop_next(1)
    t0 = datetime.now(UTC)
    resp = session.post(site.stac_url + "/search", json={"collections": [S1]}, timeout=10)
    assert resp.status_code == 200 and resp.json()["numberMatched"] == 12
    assert (datetime.now(UTC) - t0).total_seconds() >= 1  # Retry-After was honoured
    wait_for_searches(site, 3)
    assert [(e.status, e.fault) for e in site.stac_server.searches()] == [
        (429, "fail"),
        (0, "drop"),
        (200, None),
    ]
    site.stac_server.faults.fail_next(1, 503)
    bare = requests.post(site.stac_url + "/search", json={}, timeout=10)
    assert bare.status_code == 503 and bare.json()["code"] == "ServiceUnavailable"


def test_stac_delay_trips_client_timeout(flanders_site: PublishedSite) -> None:
    site = flanders_site
    site.stac_server.faults.delay_next(1, 1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(site.stac_url + "/search", json={}, timeout=0.3)
    assert requests.post(site.stac_url + "/search", json={}, timeout=5).status_code == 200
    wait_for_searches(site, 2)  # the delayed answer is logged once written, after its delay
    assert sorted(str(e.fault) for e in site.stac_server.searches()) == ["None", "delay"]


def test_cog_faults_seen_by_gdal(flanders_site: PublishedSite) -> None:
    site = flanders_site
    s2_href = site.s2_items[0]["assets"]["B02"]["href"]
    s1_href = site.s1_items[0]["assets"]["vh"]["href"]
    site.cog_server.faults.deny("/sentinel1-grd-rtc/", 403)
    with pytest.raises(RasterioIOError, match="403"), rasterio.Env(**site.gdal_env()):
        rasterio.open(s1_href)
    with rasterio.Env(**site.gdal_env()), rasterio.open(s2_href) as ds:  # S2 still readable
        assert ds.read(1).shape == (80, 80)  # 64 + 2 x 8 px padding
    site.reset()
    site.cog_server.faults.fail_next(1, 503)
    env = {**site.gdal_env(), "GDAL_HTTP_MAX_RETRY": "2", "GDAL_HTTP_RETRY_DELAY": "0.05"}
    with rasterio.Env(**env), rasterio.open(s1_href) as ds:
        assert ds.read(1).dtype == np.float32
    statuses = [e.status for e in site.cog_server.requests]
    assert statuses[0] == 503 and {200, 206} & set(statuses[1:])


# --- publishing rules ---------------------------------------------------------------------


def test_publish_refuses_lonlat_cubes(cubes_dir, tmp_path) -> None:
    cube = read_cube(find_cube(cubes_dir, "pt-santarem"))
    with pytest.raises(PublishError, match="EPSG:4326"):
        publish_cube(cube, tmp_path, "http://c", "http://s")


def test_20m_grid_alignment_and_fallback(published_site: PublishSite) -> None:
    bolzano = published_site("it-bolzano", max_dates=2)
    scl = bolzano.s2_items[0]["assets"]["SCL"]
    left, top = scl["proj:transform"][2], scl["proj:transform"][5]
    assert scl["gsd"] == 20.0 and left % 20 == 0 and top % 20 == 0
    assert left == bolzano.cube["x"].values[0] - 5 - 10  # one nodata column aligns the grid
    field = published_site("es-field", max_dates=2)
    assert field.s2_items[0]["assets"]["SCL"]["gsd"] == 10.0  # its SCL is not 2x2 replicated
    assert "SCL" in json.loads((field.folder / "publication.json").read_text())["notes"][0]
    assert published_site("es-field", max_dates=2) is field  # cached per (name, options)
    fresh = published_site("es-field", max_dates=2, fresh=True)
    assert fresh.stac_url != field.stac_url and fresh.cog_server.url != field.cog_server.url


def test_parse_interval_open_ends() -> None:
    lo, hi = parse_interval("../2020-01-01")
    assert lo is None and hi == datetime(2020, 1, 1, 23, 59, 59, 999999, tzinfo=UTC)
    lo, hi = parse_interval("2020-01-01T10:00:00Z/")
    assert lo == datetime(2020, 1, 1, 10, tzinfo=UTC) and hi is None


def test_options_select_dates(cubes_dir, tmp_path) -> None:
    cube = read_cube(find_cube(cubes_dir, "tz-arusha"))
    opts = PublishOptions(start="2020-01-01", end="2020-03-31", include_s1=False)
    items = publish_cube(cube, tmp_path, "http://c", "http://s", opts)
    days = cube["time_s2"].values.astype("datetime64[D]")
    want = ((days >= np.datetime64("2020-01-01")) & (days <= np.datetime64("2020-03-31"))).sum()
    assert len(items[S2]) == want > 0 and items[S1] == []
