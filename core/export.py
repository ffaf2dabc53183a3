"""Files a user takes away: one reconstructed frame as a GeoTIFF, a season's frames as NetCDF,
the field as GeoJSON.

The GeoTIFF keeps the cube's own grid (CRS and transform, no resampling): bands are the ten
Sentinel-2 reflectances in :data:`core.cube.S2_BANDS` order, then NDVI, then NDVI p10 and p90
when the reconstruction was sampled; float32 with NaN as no data, each band named in its
description, and the date, method and source in the file's tags. The CSV of the NDVI curve is
:func:`core.curve.curve_csv`; it is not repeated here.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr
from rasterio.io import MemoryFile

from core.cube import S2_BANDS
from core.errors import InputError
from core.field import Field
from core.grid import Grid
from core.reconstruct import write_reconstruction


def frame_band_names(frame: xr.Dataset) -> list[str]:
    """Band names of :func:`frame_geotiff` for a one-date reconstruction ``frame``."""
    names = [*S2_BANDS, "NDVI"]
    if "ndvi_p10" in frame and "ndvi_p90" in frame:
        names += ["NDVI_p10", "NDVI_p90"]
    return names


def frame_geotiff(frame: xr.Dataset, grid: Grid, *, tags: dict[str, str] | None = None) -> bytes:
    """One reconstructed date as GeoTIFF bytes on ``grid``.

    Args:
        frame: a reconstruction (see :func:`core.reconstruct.reconstruct`) holding exactly one
            ``time``, or with the ``time`` dimension already selected away.
        grid: the grid the reconstruction lives on (its CRS and transform are written).
        tags: extra metadata written as GeoTIFF tags.

    Returns:
        The bytes of a deflate-compressed, tiled float32 GeoTIFF.

    Raises:
        InputError: ``frame`` holds several dates or does not match ``grid``.
    """
    if "time" in frame.dims:
        if frame.sizes["time"] != 1:
            raise InputError(
                f"A GeoTIFF holds one date; this reconstruction has {frame.sizes['time']}."
            )
        frame = frame.isel(time=0)
    shape = (frame.sizes["y"], frame.sizes["x"])
    if shape != grid.shape:
        raise InputError(f"The frame is {shape} pixels but the grid is {grid.shape}.")
    layers = [np.asarray(frame["s2"].values, dtype=np.float32)]
    layers.append(np.asarray(frame["ndvi"].values, dtype=np.float32)[None])
    names = frame_band_names(frame)
    if "NDVI_p10" in names:
        layers.append(np.asarray(frame["ndvi_p10"].values, dtype=np.float32)[None])
        layers.append(np.asarray(frame["ndvi_p90"].values, dtype=np.float32)[None])
    data = np.concatenate(layers, axis=0)
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": data.shape[0],
        "dtype": "float32",
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": float("nan"),
        "compress": "deflate",
        "predictor": 3,
        "tiled": grid.width >= 16 and grid.height >= 16,
        "blockxsize": 16 if grid.width < 256 else 256,
        "blockysize": 16 if grid.height < 256 else 256,
    }
    meta = {"units": "reflectance (0-1); NDVI (-1..1)"}
    if "time" in frame.coords:
        meta["date"] = str(np.datetime64(frame["time"].values, "D"))
    made_by = ("method", "samples", "site", "source", "license", "options_json")
    model = ("model_checkpoint", "model_weights_sha256", "model_steps")
    for key in (*made_by, *model):  # every setting and the model that made it (review 23)
        if key in frame.attrs:
            meta[key] = str(frame.attrs[key])
    meta.update(tags or {})
    with MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(data)
            for index, name in enumerate(names, start=1):
                dst.set_band_description(index, name)
            dst.update_tags(**meta)
        return bytes(memory.read())


def read_geotiff_bands(data: bytes) -> tuple[np.ndarray, dict[str, object]]:
    """Read GeoTIFF bytes back: ``(array (bands, H, W), {"crs", "transform", "names",
    "tags"})``. Used by the tests and handy for checking a download."""
    with MemoryFile(data) as memory, memory.open() as src:
        info = {
            "crs": str(src.crs),
            "transform": src.transform,
            "names": list(src.descriptions),
            "tags": src.tags(),
        }
        return src.read(), info


def reconstruction_netcdf(frames: xr.Dataset) -> bytes:
    """A reconstruction (any number of dates; :func:`core.reconstruct.reconstruct`'s dataset,
    possibly with more variables) as the bytes of the NetCDF file
    :func:`core.reconstruct.write_reconstruction` writes (compressed float32, the CRS and the
    method's settings in its attributes)."""
    with tempfile.TemporaryDirectory(prefix="fieldflow-export-") as folder:
        path = write_reconstruction(frames, Path(folder) / "frames.nc")
        return path.read_bytes()


def field_geojson(field: Field) -> str:
    """The field as a GeoJSON FeatureCollection (EPSG:4326) of one feature, as text."""
    collection = {"type": "FeatureCollection", "features": [field.to_geojson()]}
    return json.dumps(collection, indent=1)


def safe_file_stem(name: str, default: str = "field") -> str:
    """A file-name-safe version of a field name: letters, digits, ``-`` and ``_`` only."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name.strip())
    cleaned = "_".join(part for part in cleaned.split("_") if part)
    return cleaned[:60] or default
