"""The demo parcel, its season, and where its data comes from (live or the offline cube)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import shapely
import xarray as xr
from scipy import ndimage

from core.config import Settings
from core.demo import (
    DEMO_CUBE_NAME,
    DEMO_END,
    DEMO_OUTLINE_WKT,
    DEMO_START,
    DemoPreset,
    DemoUnavailableError,
    choose_source,
    demo_cube_path,
    demo_field,
    demo_preset,
    parcel_polygon,
    stac_reachable,
)
from core.errors import CubeError
from core.grid import field_mask


def test_demo_parcel_is_the_largest_connected_parcel_of_the_cube(
    flanders_cube: xr.Dataset,
) -> None:
    polygon = parcel_polygon(flanders_cube)
    codes = flanders_cube["crop_type"].values
    best = (0, 0)
    for code in np.unique(codes[codes != 0]):
        labels, _ = ndimage.label(codes == code)  # 4-connectivity
        sizes = np.bincount(labels.ravel())[1:]
        best = max(best, (int(sizes.max()), int(code)))
    assert polygon.area == pytest.approx(best[0] * 100.0)  # 10 m pixels
    assert best == (628, 1200)
    # The stored outline (used without the cube) is the same polygon.
    assert polygon.equals(shapely.from_wkt(DEMO_OUTLINE_WKT))


def test_demo_field_covers_exactly_the_parcel_pixels(
    flanders_cube: xr.Dataset, cubes_dir: Path
) -> None:
    field = demo_field(cubes_dir / DEMO_CUBE_NAME)
    mask = field_mask(field, flanders_cube)
    codes = flanders_cube["crop_type"].values
    assert mask.sum() == 628
    assert (codes[mask] == 1200).all()
    assert field.area_ha == pytest.approx(6.28, abs=0.02)
    assert demo_field(None).key == field.key  # without the cube: same outline


def test_parcel_choice_is_deterministic_on_ties_and_sizes() -> None:
    codes = np.array(
        [
            [5, 5, 0, 3, 3],
            [5, 5, 0, 3, 3],
            [0, 0, 0, 0, 0],
            [7, 7, 7, 0, 9],
        ]
    )
    cube = xr.Dataset(
        {"crop_type": (("y", "x"), codes)},
        coords={"y": 100.0 - 10 * np.arange(4) - 5, "x": 10 * np.arange(5) + 5.0},
        attrs={"crs": "EPSG:32631", "resolution_m": 10.0},
    )
    # Three parcels of 4, 4 and 3 pixels: the tie between codes 3 and 5 goes to code 3.
    polygon = parcel_polygon(cube)
    assert polygon.area == 400.0
    assert polygon.bounds == (30.0, 80.0, 50.0, 100.0)
    with pytest.raises(CubeError, match="no 'crop_type'"):
        parcel_polygon(cube.drop_vars("crop_type"))
    with pytest.raises(CubeError, match="no parcel"):
        parcel_polygon(cube.assign(crop_type=cube["crop_type"] * 0))


def test_demo_preset_season_and_cube_path(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert demo_cube_path(settings, {}) == tmp_path / "cubes" / DEMO_CUBE_NAME
    assert demo_cube_path(settings, {"FIELDFLOW_DEMO_CUBE": "/x/y.nc"}) == Path("/x/y.nc")
    preset = demo_preset(demo_cube_path(settings, {}))
    assert (preset.start, preset.end) == (DEMO_START, DEMO_END)
    assert not preset.cube_available  # no cube there: the stored outline is used
    assert preset.field.area_ha == pytest.approx(6.28, abs=0.02)


@pytest.mark.parametrize(
    ("cube", "stac", "offline", "mode"),
    [
        (True, True, False, "live"),
        (True, True, True, "offline"),
        (True, False, False, "offline"),
        (False, True, True, "live"),
    ],
)
def test_choose_source(tmp_path: Path, cube: bool, stac: bool, offline: bool, mode: str) -> None:
    path = tmp_path / "demo.nc"
    if cube:
        path.write_bytes(b"x")
    preset = DemoPreset(demo_field(None), DEMO_START, DEMO_END, path)
    source = choose_source(preset, stac_url="http://s", stac_available=stac, prefer_offline=offline)
    assert source.mode == mode
    assert (source.cube_path == path) if mode == "offline" else source.cube_path is None


def test_a_demo_cube_that_cannot_be_the_demo_says_which_file_and_what_to_do(
    cubes_dir: Path, tmp_path: Path
) -> None:
    not_netcdf = tmp_path / "demo.nc"
    not_netcdf.write_text("not a cube")
    # The demo cube's parcel layer on the longitude/latitude grid of the shared hu-alfold cube.
    with (
        xr.open_dataset(cubes_dir / DEMO_CUBE_NAME) as demo,
        xr.open_dataset(cubes_dir / "hu-alfold_2021.nc") as lonlat,
    ):
        size = min(demo.sizes["y"], lonlat.sizes["y"]), min(demo.sizes["x"], lonlat.sizes["x"])
        codes = demo["crop_type"].values[: size[0], : size[1]]
        geographic = xr.Dataset(
            {"crop_type": (("y", "x"), codes)},
            coords={"y": lonlat["y"].values[: size[0]], "x": lonlat["x"].values[: size[1]]},
            attrs=dict(lonlat.attrs),
        )
    geographic.to_netcdf(tmp_path / "lonlat.nc")
    for path, why in (
        (cubes_dir / "es-field_2019.nc", "has no 'crop_type' layer"),  # a real cube, no parcels
        (not_netcdf, "is not a readable NetCDF cube"),
        (tmp_path / "lonlat.nc", "longitude/latitude grid"),
    ):
        with pytest.raises(CubeError) as raised:
            demo_field(path)
        message = str(raised.value)
        assert str(path) in message and why in message
        assert "FIELDFLOW_DEMO_CUBE" in message and DEMO_CUBE_NAME in message


def test_choose_source_says_how_to_get_data_when_there_is_none(tmp_path: Path) -> None:
    preset = DemoPreset(demo_field(None), DEMO_START, DEMO_END, tmp_path / "missing.nc")
    with pytest.raises(DemoUnavailableError, match="FIELDFLOW_DATA_DIR") as info:
        choose_source(preset, stac_url="http://s", stac_available=False, prefer_offline=True)
    assert "missing.nc" in str(info.value) and "http://s" in str(info.value)


class _Landing(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"type": "Catalog", "links": []}).encode()
        if self.path.startswith("/broken"):
            body = b"<html>not json</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def landing_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Landing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_stac_reachable(landing_url: str) -> None:
    assert stac_reachable(f"{landing_url}/api/stac/v1")
    assert not stac_reachable(f"{landing_url}/broken")
    assert not stac_reachable("http://127.0.0.1:9/api", timeout_s=1.0)  # nothing listens
