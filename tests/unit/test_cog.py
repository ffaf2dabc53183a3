"""The frame stack COG: layout, values, georeferencing, COG structure, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import xarray as xr

from core import cog
from core.cog import (
    read_frame_stack,
    stack_blocksize,
    stack_layer_names,
    write_frame_stack,
)
from core.cube import S2_BANDS
from core.errors import CubeError, InputError, OutputError
from core.grid import Grid

GRID = Grid("EPSG:32631", 10.0, x0=500000.0, y0=5600300.0, width=50, height=40)
DATES = np.array(["2023-05-02", "2023-05-07", "2023-05-12"], dtype="datetime64[ns]")


def reconstruction(grid: Grid = GRID, dates: np.ndarray = DATES, *, sampled: bool = False):
    """A reconstruction whose every value says where it is: s2 = t + band / 100 + pixel / 1e5
    (pixel = row * width + col), NaN in the top-left pixel; ndvi = -t / 10."""
    t, b = len(dates), len(S2_BANDS)
    pixel = np.arange(grid.height * grid.width, dtype=np.float64).reshape(grid.shape) / 1e5
    s2 = (
        np.arange(t)[:, None, None, None]
        + np.arange(b)[None, :, None, None] / 100
        + pixel[None, None]
    ).astype(np.float32)
    s2[:, :, 0, 0] = np.nan
    ndvi = np.broadcast_to(-np.arange(t, dtype=np.float32)[:, None, None] / 10, (t, *grid.shape))
    observed = np.zeros((t, *grid.shape), dtype=np.uint8)
    observed[0, :10] = 1  # a quarter of the first date (10 of 40 rows) is a kept observation
    data = {
        "s2": (("time", "band", "y", "x"), s2),
        "ndvi": (("time", "y", "x"), ndvi.copy()),
        "observed": (("time", "y", "x"), observed),
    }
    if sampled:
        data["ndvi_p10"] = (("time", "y", "x"), ndvi - 0.05)
        data["ndvi_p90"] = (("time", "y", "x"), ndvi + 0.05)
    coords = {"time": dates, "band": list(S2_BANDS), "y": grid.y, "x": grid.x}
    attrs = {"crs": grid.crs, "resolution_m": grid.resolution_m, "method": "linear"}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def test_layout_values_and_georeferencing(tmp_path) -> None:
    result = reconstruction()
    path = write_frame_stack(result, tmp_path / "frames.tif", tags={"FIELD": "North"})
    with rasterio.open(path) as src:
        assert src.count == 3 * 11
        assert src.crs.to_epsg() == 32631
        assert src.transform == GRID.transform
        assert (src.width, src.height) == (50, 40)
        assert src.dtypes[0] == "float32" and np.isnan(src.nodata)
        assert src.descriptions[0] == "2023-05-02 B02"
        assert src.descriptions[12] == "2023-05-07 B03"  # band 13 = date 1, layer 1
        assert src.descriptions[32] == "2023-05-12 NDVI"
        assert src.tags(13) == {"DATE": "2023-05-07", "NAME": "B03", "OBSERVED_FRACTION": "0.0000"}
        assert src.tags(1)["OBSERVED_FRACTION"] == "0.2500"
        tags = src.tags()
        assert tags["DATES"] == "2023-05-02,2023-05-07,2023-05-12"
        assert tags["LAYERS"] == ",".join([*S2_BANDS, "NDVI"])
        assert tags["LAYERS_PER_DATE"] == "11"
        assert tags["METHOD"] == "linear" and tags["FIELD"] == "North"
        assert tags["OBSERVED_FRACTION_OF"] == "grid"
        band13 = src.read(13)
        ndvi = src.read(33)
    # date 1, band B03, pixel (row 3, col 7) = 1 + 0.01 + (3 * 50 + 7) / 1e5
    assert band13[3, 7] == pytest.approx(1.01 + 157e-5, abs=1e-6)
    assert np.isnan(band13[0, 0])
    assert np.all(ndvi == np.float32(-0.2))


def test_the_observed_fraction_counts_the_fields_pixels_when_the_field_is_given(tmp_path) -> None:
    result = reconstruction()  # the first date's top 10 of 40 rows kept clear
    field = np.zeros(GRID.shape, dtype=bool)
    field[:20, :] = True  # 20 rows, 10 of them kept clear: half, where the grid's is a quarter
    path = write_frame_stack(result, tmp_path / "frames.tif", field_mask=field)
    with rasterio.open(path) as src:
        assert src.tags(1)["OBSERVED_FRACTION"] == "0.5000"
        assert src.tags(12)["OBSERVED_FRACTION"] == "0.0000"
        assert src.tags()["OBSERVED_FRACTION_OF"] == "field"
    with pytest.raises(ValueError, match="does not match the frames"):
        write_frame_stack(result, tmp_path / "other.tif", field_mask=field[:, :10])


def test_is_a_cloud_optimized_geotiff_with_tiles_and_overviews(tmp_path) -> None:
    big = Grid("EPSG:32631", 10.0, x0=500000.0, y0=5603000.0, width=300, height=300)
    path = write_frame_stack(reconstruction(big, DATES[:1]), tmp_path / "frames.tif", blocksize=128)
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.profile["tiled"] and src.block_shapes[0] == (128, 128)
        assert src.profile["compress"] == "deflate"
        assert src.overviews(1) == [2, 4]  # down to one tile
        assert src.overviews(11) == [2, 4]
    # GDAL's COG layout: the structural-metadata "ghost" header and every IFD before the data
    head = Path(path).read_bytes()[:400]
    assert b"GDAL_STRUCTURAL_METADATA_SIZE" in head
    assert b"LAYOUT=IFDS_BEFORE_DATA" in head


def test_small_field_is_one_tile_and_many_bands_keep_tiles_bounded() -> None:
    assert stack_blocksize(11, 64) == 128  # the COG driver's smallest tile
    assert stack_blocksize(11, 300) == 304
    assert stack_blocksize(11, 5000) == 512
    # 90 dates x 11 layers: 16 MiB allows only ~61 px, the driver's minimum wins
    assert stack_blocksize(990, 1000) == 128
    assert stack_blocksize(40, 1000) == 320  # 320 * 320 * 40 * 4 B = 15.6 MiB
    assert stack_blocksize(990, 1000, band_interleaved=True) == 512
    with pytest.raises(InputError):
        stack_blocksize(0, 10)


def test_sampled_reconstructions_add_the_ndvi_band_and_read_back(tmp_path) -> None:
    result = reconstruction(sampled=True)
    assert stack_layer_names(result) == [*S2_BANDS, "NDVI", "NDVI_p10", "NDVI_p90"]
    path = write_frame_stack(result, tmp_path / "frames.tif")
    with rasterio.open(path) as src:
        assert src.count == 3 * 13
    back = read_frame_stack(path)
    np.testing.assert_array_equal(back["time"].values, DATES)
    np.testing.assert_array_equal(back["x"].values, GRID.x)
    np.testing.assert_array_equal(back["y"].values, GRID.y)
    assert back.attrs["crs"] == "EPSG:32631" and back.attrs["resolution_m"] == 10.0
    for name in ("s2", "ndvi", "ndvi_p10", "ndvi_p90"):
        np.testing.assert_array_equal(back[name].values, result[name].values)


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporaries(
    tmp_path, monkeypatch
) -> None:
    path = write_frame_stack(reconstruction(), tmp_path / "frames.tif")
    before = path.read_bytes()

    def broken_copy(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(rasterio.shutil, "copy", broken_copy)
    # a library's words of a failed write become one OutputError line (core.storage)
    with pytest.raises(OutputError, match=r"the write failed \(disk full\): the disk may be full"):
        write_frame_stack(reconstruction(dates=DATES[:1]), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.tif"]


def test_bad_input_is_refused(tmp_path) -> None:
    result = reconstruction()
    with pytest.raises(InputError, match="'ndvi'"):
        write_frame_stack(result.drop_vars("ndvi"), tmp_path / "a.tif")
    with pytest.raises(InputError, match="no dates"):
        write_frame_stack(result.isel(time=slice(0, 0)), tmp_path / "a.tif")
    other = Grid("EPSG:32631", 10.0, x0=500000.0, y0=5600300.0, width=10, height=10)
    with pytest.raises(InputError, match="grid is 10x10"):
        write_frame_stack(result, tmp_path / "a.tif", grid=other)
    with pytest.raises(InputError, match="multiple of 16"):
        write_frame_stack(result, tmp_path / "a.tif", blocksize=100)
    with pytest.raises(CubeError, match="No frame stack"):
        read_frame_stack(tmp_path / "missing.tif")
    plain = tmp_path / "plain.tif"
    profile = {"driver": "GTiff", "width": 2, "height": 2, "count": 1, "dtype": "float32"}
    with rasterio.open(plain, "w", crs=GRID.crs, transform=GRID.transform, **profile) as dst:
        dst.write(np.zeros((1, 2, 2), np.float32))
    with pytest.raises(CubeError, match="not a FieldFlow frame stack"):
        read_frame_stack(plain)
    assert cog.MIN_BLOCKSIZE == 128
